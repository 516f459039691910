"""What the rest of fedcmi knows about a local method, without importing it: its :class:`MethodSpec`.

Light on purpose (no torch): the configuration reads a method's defaults and defining keys, and ``fedcmi
methods`` lists them, before anything heavy is imported. The method's code (a ``LocalMethod``) is imported
when :meth:`MethodSpec.build` is first called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedcmi.config import RunConfig
    from fedcmi.methods.base import LocalMethod
    from fedcmi.methods.remedies.base import Remedy
    from fedcmi.methods.server_step import ServerStep

# The server step every method has today: the dominance of the modalities, from the clients' class statistics
# (FedCMI's guidance; every run's metrics row reports it)
DOMINANCE_GUIDANCE = "fedcmi.methods.guidance:build"


@dataclass(frozen=True)
class Constraint:
    """What a method's defining key must be (``text`` reads after the key: ``"= 0"``, ``"> 0"``)."""

    check: Callable[[Any], bool]
    text: str


def equals(value: Any) -> Constraint:
    return Constraint(lambda v: v == value, f"= {value!r}".replace("False", "false").replace("True", "true"))


POSITIVE = Constraint(lambda v: v > 0, "> 0")


@dataclass(frozen=True)
class MethodSpec:
    """Everything the rest of fedcmi needs to know about a method, in one place.

    ``builder``: ``"module:function"``, the function ``(RunConfig) -> LocalMethod`` that builds one client
    round's method (imported on the first :meth:`build`). ``model``: ``"fedcmi"`` (two projectors per modality)
    or ``"concat"``. ``modalities``: what it trains and is evaluated on (unimodal baselines: one). ``uses``: the
    method keys it reads; ``defaults``: its values for keys the user did not set; ``defining``: keys whose
    value makes it this method (a contradicting user value is refused). ``infiltration_path``: evaluate a
    modality alone through its infiltration projector (else zero-filled). ``ours``: fedcmi's own variant.
    ``server``: ``"module:function"`` builders ``(RunConfig, num_classes) -> ServerStep | None`` of the method's
    server half (``fedcmi.methods.server_step``), imported when the server first builds them.
    """

    name: str
    summary: str
    builder: str
    model: str = "concat"
    modalities: tuple[str, ...] = ("a", "b")
    uses: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    defining: Mapping[str, Constraint] = field(default_factory=dict)
    infiltration_path: bool = False
    ours: bool = False  # fedcmi's own variant, not a published method: labelled wherever results are shown
    server: tuple[str, ...] = (DOMINANCE_GUIDANCE,)

    def build(self, cfg: RunConfig) -> LocalMethod:
        """A fresh ``LocalMethod`` for one client round (imports the method's module the first time)."""
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(cfg)

    def server_steps(self, cfg: RunConfig, num_classes: int) -> list[ServerStep]:
        """The method's server steps for this run (imports their modules the first time)."""
        steps = []
        for builder in self.server:
            module, _, function = builder.partition(":")
            step = getattr(importlib.import_module(module), function)(cfg, num_classes)
            if step is not None:
                steps.append(step)
        return steps

    @property
    def decomposed(self) -> bool:
        return self.model == "fedcmi"

    def held(self, kind: str) -> tuple[str, ...]:
        """The modalities a client of this kind trains under this method."""
        from fedcmi.modalities import modalities_of

        return tuple(m for m in modalities_of(kind) if m in self.modalities)


@dataclass(frozen=True)
class RemedySpec:
    """A label-skew remedy any method can switch on (``fedcmi.methods.remedies``), without importing it.

    ``keys``: the configuration keys it reads. ``builder``: ``"module:function"``, ``(RunConfig) -> Remedy |
    None`` for one client round, ``None`` when its key leaves it off (imported on the first :meth:`build`).
    """

    name: str
    summary: str
    builder: str
    keys: tuple[str, ...] = ()

    def build(self, cfg: RunConfig) -> Remedy | None:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)(cfg)
