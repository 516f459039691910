"""Building a run's model: the FedCMI model or the concat baseline, for given input shapes and classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from fedcmi.models.concat_model import ConcatModel
from fedcmi.models.encoders import build_encoder
from fedcmi.models.fedcmi_model import FedCMIModel
from fedcmi.models.fusion import build_fusion

if TYPE_CHECKING:
    from fedcmi.config import RunConfig
    from fedcmi.data.base import MultimodalData


def build_model(encoder: str, shapes: tuple[tuple[int, ...], tuple[int, ...]], num_classes: int,
                feature_dim: int, decomposed: bool, projector: str = "linear", *, fusion: str = "concat",
                text_encoder: str = "bert-base-uncased", encoder_weights: str = "", sgmft_tokens: int = 8,
                sgmft_heads: int = 4, sgmft_layers: int = 1) -> nn.Module:
    """A FedCMI model (``decomposed``) or the concat baseline, for inputs of the given shapes.

    A 1-D input shape is a token-id sequence and gets the ``text_encoder`` (transformers), projected to the
    other encoder's width; ``encoder_weights`` initialises ResNet-18 encoders (see ``models.pretrained``).
    ``encoder="features"``: the inputs are token embeddings from ``fedcmi features`` (``models.features``).
    """
    if encoder == "features":
        from fedcmi.models.features import FeatureTokens

        segments = sgmft_tokens if fusion == "sgmft" else 1
        encs: list[nn.Module | None] = [FeatureTokens(s, feature_dim, segments) for s in shapes]
        return _assemble(encs, num_classes, feature_dim, decomposed, projector, fusion,
                         sgmft_tokens, sgmft_heads, sgmft_layers)

    def image_encoder(shape: tuple[int, ...]) -> nn.Module:
        if encoder == "resnet18" and encoder_weights:
            from fedcmi.models.pretrained import resnet18_encoder

            return resnet18_encoder(shape[0], encoder_weights)
        enc = build_encoder(encoder, shape[0], feature_dim)
        if len(shape) == 4 and encoder != "resnet18":  # C x F x H x W: frames through a 2-D encoder
            from fedcmi.models.frames import FrameAveraged

            return FrameAveraged(enc)
        return enc

    encs = [None if len(s) == 1 else image_encoder(s) for s in shapes]
    width = next((e.out_dim for e in encs if e is not None), feature_dim)
    if any(e is None for e in encs):
        from fedcmi.models.pretrained import TextEncoder

        encs = [e if e is not None else TextEncoder(text_encoder, out_dim=width) for e in encs]
    return _assemble(encs, num_classes, feature_dim, decomposed, projector, fusion,
                     sgmft_tokens, sgmft_heads, sgmft_layers)


def _assemble(encs: list[nn.Module | None], num_classes: int, feature_dim: int, decomposed: bool,
              projector: str, fusion: str, sgmft_tokens: int, sgmft_heads: int, sgmft_layers: int) -> nn.Module:
    """The model around two built encoders: FedCMI's projectors and head, or the concat baseline's head."""
    enc_a, enc_b = encs
    sgmft = {"tokens": sgmft_tokens, "heads": sgmft_heads, "layers": sgmft_layers} if fusion == "sgmft" else {}
    if decomposed:
        return FedCMIModel(enc_a, enc_b, num_classes, feature_dim, projector,
                           build_fusion(fusion, feature_dim, num_classes, **sgmft))
    return ConcatModel(enc_a, enc_b, num_classes, build_fusion(fusion, enc_a.out_dim, num_classes, **sgmft))


# The run-config keys (attribute names) that define a model: every ``build_model`` argument but the shapes, the
# classes and ``decomposed``. ``model_for`` builds from exactly these, and a client's model cache is keyed by
# them (``model_key``), so a key added here can never leave a client training a stale model.
MODEL_KEYS = ("encoder", "feature_dim", "projector", "fusion", "text_encoder", "encoder_weights", "sgmft_tokens",
              "sgmft_heads", "sgmft_layers")


def model_options(cfg: RunConfig) -> dict[str, Any]:
    """The ``build_model`` arguments a run config sets (:data:`MODEL_KEYS`)."""
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


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


def model_for(cfg: RunConfig, spec: ModelSpec, decomposed: bool) -> nn.Module:
    """The one place a run's model is built (server, clients, benchmarks)."""
    return build_model(shapes=(spec.shape_a, spec.shape_b), num_classes=spec.num_classes, decomposed=decomposed,
                       **model_options(cfg))


def model_key(cfg: RunConfig, spec: ModelSpec, decomposed: bool) -> tuple[Any, ...]:
    """What tells two models built by :func:`model_for` apart: equal keys, the same architecture."""
    return (*model_options(cfg).values(), decomposed, spec)
