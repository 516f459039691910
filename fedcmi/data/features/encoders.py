"""Frozen pretrained encoders for ``fedcmi features``, loaded only from local files (this code never downloads).

Each maps a batch of one prepared column to token embeddings ``B x T x D``, keeping the token axis the encoder
has, so a fusion head can attend over it:

* frames (``B x 3 x F x H x W``) -> a torchvision image CNN per frame, global-average pooled: ``F`` tokens;
* an image (``B x 3 x H x W``, or ``B x 1 x H x W`` gray) -> the same CNN: one token;
* a spectrogram (``B x 1 x freq x time``, z-scored by ``prepare``) -> a torchvision CNN over it (the channel
  repeated to the three the CNN was trained on), averaged over frequency: one token per output time step;
* token ids (``B x L``) -> a BERT-family ``transformers`` model's last hidden states: ``L`` tokens, padding
  positions set to zero (what :mod:`fedcmi.models.features` treats as padding).

A CNN is given as a state-dict file (``torch.save(model.state_dict())`` or ``.safetensors``); its torchvision
architecture is recognised from the keys and shapes. A text model is a ``save_pretrained`` directory.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedcmi.errors import ConfigError

logger = logging.getLogger(__name__)

# torchvision architectures a state-dict file may hold, cheapest to build first
CNN_ARCHS = ("mobilenet_v2", "resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "resnet34", "resnet50",
             "efficientnet_b0")
# other widths tried when the keys are an architecture's but the shapes are not (same keys, narrower layers)
WIDTHS = {"mobilenet_v2": (0.5, 0.75, 1.4, 0.35, 0.25)}


@dataclass
class FrozenEncoder:
    """A loaded encoder: ``encode(batch) -> B x T x D`` and what identifies it (recorded in the manifest)."""

    kind: str  # "cnn" or "text"
    arch: str
    path: str
    digest: str
    encode: Callable[[torch.Tensor], torch.Tensor]

    def describe(self) -> dict[str, str]:
        return {"kind": self.kind, "arch": self.arch, "path": self.path, "sha256": self.digest}


def file_digest(paths: list[Path]) -> str:
    """sha256 over the files' bytes (a changed weights file must not reuse old shards)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _read_state(path: Path, flag: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"{flag}={str(path)!r}: no such file (a torchvision state dict saved with "
                          "torch.save(model.state_dict()), or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(f"{flag}={str(path)!r}: not a readable state-dict file ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{flag}={str(path)!r}: holds no state dict of tensors")
    check_finite(state, f"{flag}={str(path)!r}")
    return state


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """Refuse an encoder with a NaN or Inf weight (one line): it could only yield non-finite features."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"{where}: tensor {name!r} holds NaN or Inf; refusing an encoder with non-finite "
                              "weights")


def _trunk(arch: str, state: dict[str, torch.Tensor]) -> tuple[str, nn.Module] | None:
    """(name, convolutional trunk) of ``arch`` loaded with ``state``, or None if the state is not that arch's."""
    import torchvision.models as tvm

    def matches(m: nn.Module) -> bool:
        own = m.state_dict()
        return all(own[k].shape == state[k].shape for k in own)

    name, model = arch, getattr(tvm, arch)(weights=None)
    if set(model.state_dict()) != set(state):
        return None
    if not matches(model):
        widths = (w for w in WIDTHS.get(arch, ()) if matches(getattr(tvm, arch)(weights=None, width_mult=w)))
        width = next(widths, None)
        if width is None:
            return None
        name, model = f"{arch}(width_mult={width})", getattr(tvm, arch)(weights=None, width_mult=width)
    model.load_state_dict(state)
    trunk = model.features if hasattr(model, "features") else nn.Sequential(*list(model.children())[:-2])
    return name, trunk.eval().requires_grad_(False)


def load_cnn(path: str | Path, flag: str) -> tuple[str, nn.Module]:
    """(architecture name, frozen conv trunk) of a torchvision state-dict file; one clear line if it is none."""
    p = Path(path).expanduser()
    state = _read_state(p, flag)
    for arch in CNN_ARCHS:
        found = _trunk(arch, state)
        if found is not None:
            logger.info("%s: %s from %s", flag, found[0], p)
            return found
    raise ConfigError(f"{flag}={str(p)!r}: not the state dict of a torchvision {', '.join(CNN_ARCHS)} "
                      f"({len(state)} tensors, first key {next(iter(state), '-')!r})")


def _frames_tokens(trunk: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def encode(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # one image: one token (a gray one repeated to the three channels the CNN knows)
            return trunk(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).mean(dim=(2, 3))[:, None]
        b, c, f, h, w = x.shape
        maps = trunk(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return maps.mean(dim=(2, 3)).view(b, f, -1)

    return encode


def _spectrogram_tokens(trunk: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def encode(x: torch.Tensor) -> torch.Tensor:
        maps = trunk(x.expand(-1, 3, -1, -1))  # B x D x freq' x time'
        return maps.mean(dim=2).transpose(1, 2)  # B x time' x D

    return encode


def image_encoder(path: str | Path, device: torch.device, flag: str = "--image-encoder") -> FrozenEncoder:
    arch, trunk = load_cnn(path, flag)
    p = Path(path).expanduser().resolve()
    return FrozenEncoder("cnn", arch, str(p), file_digest([p]), _frames_tokens(trunk.to(device)))


def audio_encoder(path: str | Path, device: torch.device, flag: str = "--audio-encoder") -> FrozenEncoder:
    arch, trunk = load_cnn(path, flag)
    p = Path(path).expanduser().resolve()
    return FrozenEncoder("cnn", arch, str(p), file_digest([p]), _spectrogram_tokens(trunk.to(device)))


def text_encoder(path: str | Path, device: torch.device, pad_id: int, flag: str = "--text-encoder") -> FrozenEncoder:
    """A BERT-family model from a local ``save_pretrained`` directory; token ids -> last hidden states."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(f"{flag}={str(p)!r}: not a transformers model directory (no config.json; save one "
                          "with model.save_pretrained(DIR))")
    hf_logging.disable_progress_bar()
    try:
        model: Any = AutoModel.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag}={str(p)!r}: cannot load the model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from None
    check_finite(model.state_dict(), f"{flag}={str(p)!r}")
    model = model.eval().requires_grad_(False).to(device)
    vocab = int(model.config.vocab_size)

    def encode(ids: torch.Tensor) -> torch.Tensor:
        ids = ids.round().long()
        if int(ids.max()) >= vocab:
            raise ConfigError(f"{flag}={str(p)!r}: token id {int(ids.max())} is outside its vocabulary of "
                              f"{vocab}; prepare the text with this model's tokenizer (--tokenizer {p})")
        mask = ids != pad_id
        hidden = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return hidden * mask[..., None].to(hidden.dtype)

    weights = [f for f in p.iterdir() if f.suffix in (".safetensors", ".bin") or f.name == "config.json"]
    return FrozenEncoder("text", type(model).__name__, str(p.resolve()), file_digest(weights), encode)
