"""Building a run's model: the FedCMI model or the concat baseline, for given input shapes and classes.

The encoder and the fusion head are looked up by name in ``fedcmi.models.registry`` (one file each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from fedcmi.models.concat_model import ConcatModel
from fedcmi.models.fedcmi_model import FedCMIModel
from fedcmi.models.registry import EncoderOptions, encoder_spec, fusion_spec

if TYPE_CHECKING:
    from fedcmi.config.run_config import ModelConfig
    from fedcmi.data.base import MultimodalData


def build_model(encoder: str, shapes: tuple[tuple[int, ...], tuple[int, ...]], num_classes: int,
                feature_dim: int, decomposed: bool, projector: str = "linear", *, fusion: str = "concat",
                text_encoder: str = "bert-base-uncased", encoder_weights: str = "", sgmft_tokens: int = 8,
                sgmft_heads: int = 4, sgmft_layers: int = 1) -> nn.Module:
    """A FedCMI model (``decomposed``) or the concat baseline, for inputs of the given shapes.

    ``encoder`` and ``fusion`` name registry entries (``models.registry``). A 1-D input shape is a token-id
    sequence and gets the ``text_encoder`` (transformers), projected to the other encoder's width, built after
    the other one. ``encoder_weights`` initialises ResNet-18 encoders (``models.encoders.resnet18``).
    """
    head = fusion_spec(fusion)
    options = {"sgmft_tokens": sgmft_tokens, "sgmft_heads": sgmft_heads, "sgmft_layers": sgmft_layers}
    enc_options = EncoderOptions(feature_dim, encoder_weights, options[head.tokens] if head.tokens else 1)
    build_encoder = encoder_spec(encoder).load()
    encs = [None if len(s) == 1 else build_encoder(s, enc_options) for s in shapes]
    if any(e is None for e in encs):
        from fedcmi.models.pretrained import TextEncoder

        width = next((e.out_dim for e in encs if e is not None), feature_dim)
        encs = [e if e is not None else TextEncoder(text_encoder, out_dim=width) for e in encs]
    enc_a, enc_b = encs
    build_fusion = head.load()
    head_options = {k: options[k] for k in head.options}
    if decomposed:  # the head fuses two projector outputs, feature_dim wide
        return FedCMIModel(enc_a, enc_b, num_classes, feature_dim, projector,
                           build_fusion(feature_dim, num_classes, **head_options))
    return ConcatModel(enc_a, enc_b, num_classes, build_fusion(enc_a.out_dim, num_classes, **head_options))


# The run-config keys (attribute names of the model section, ``cfg.model``) that define a model: every
# ``build_model`` argument but the shapes, the classes and ``decomposed``. ``model_for`` builds from exactly
# these, and a client's model cache is keyed by them (``model_key``), so a key added here can never leave a
# client training a stale model.
MODEL_KEYS = ("encoder", "feature_dim", "projector", "fusion", "text_encoder", "encoder_weights", "sgmft_tokens",
              "sgmft_heads", "sgmft_layers")


def model_options(model: ModelConfig) -> dict[str, Any]:
    """The ``build_model`` arguments a run config's model section sets (:data:`MODEL_KEYS`)."""
    return {k: getattr(model, k) for k in MODEL_KEYS}


@dataclass(frozen=True)
class ModelSpec:
    """What fixes a model's shapes besides the run config: classes and the two inputs' shapes.

    The server reads it from its data set and sends it with every training message, so a client builds the
    same model from the message alone, whatever data it holds.
    """

    num_classes: int
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]

    @classmethod
    def of(cls, data: MultimodalData) -> ModelSpec:
        shape_a, shape_b = data.shapes()
        return cls(data.num_classes, tuple(shape_a), tuple(shape_b))


def model_for(model: ModelConfig, spec: ModelSpec, decomposed: bool) -> nn.Module:
    """The one place a run's model is built (server, clients, benchmarks), from its model section (``cfg.model``)."""
    return build_model(shapes=(spec.shape_a, spec.shape_b), num_classes=spec.num_classes, decomposed=decomposed,
                       **model_options(model))


def model_key(model: ModelConfig, spec: ModelSpec, decomposed: bool) -> tuple[Any, ...]:
    """What tells two models built by :func:`model_for` apart: equal keys, the same architecture."""
    return (*model_options(model).values(), decomposed, spec)
