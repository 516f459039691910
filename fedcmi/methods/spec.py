"""What the rest of fedcmi knows about a local method, without importing it: its :class:`MethodSpec` (and a
remedy's :class:`RemedySpec`, a run option's :class:`OptionSpec`).

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
    from fedcmi.methods.client_option import ClientOption
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


@dataclass(frozen=True)
class OptionSpec:
    """A run option any method can switch on (SCAFFOLD, CCVR, a server optimiser), without importing it.

    Why: an option may have a server half (a ``ServerStep``, after the method's own steps), a client half (a
    ``ClientOption``, ``fedcmi.methods.client_option``) and arrays travelling between them; this line is all
    the rest of fedcmi knows of it, so the option is its own file(s) plus this line. Both builders read the
    run config and return ``None`` when the option is off.

    ``server``: ``"module:function"``, ``(RunConfig, num_classes) -> ServerStep | None``; the step's ``name``
    is the option's name. ``client``: ``"module:function"``, ``(RunConfig, sent, kept) -> ClientOption |
    None`` for one client round (``sent``: the arrays the server step sent, None when it sent none; ``kept``:
    what the node kept from its previous round, empty before its first). The record names, spelled once here:
    ``sent`` (TRAIN: what the server step puts in ``Guidance.records[name]``), ``reply`` (the reply: what the
    client half's ``finish`` sends back, checked by the step's ``check_reply``), ``kept`` (the node's
    ``context.state``: what the client half keeps from round to round). Each is an array record keyed by
    parameter name, every array declared with its parameter's shape and dtype.
    """

    name: str
    summary: str
    server: str | None = None
    client: str | None = None
    sent: str | None = None
    reply: str | None = None
    kept: str | None = None

    def build_server(self, cfg: RunConfig, num_classes: int) -> ServerStep | None:
        """The option's server step for this run, or None (off, or no server half)."""
        if self.server is None:
            return None
        module, _, function = self.server.partition(":")
        return getattr(importlib.import_module(module), function)(cfg, num_classes)

    def build_client(self, cfg: RunConfig, sent: Mapping[str, Any] | None,
                     kept: Mapping[str, Any]) -> ClientOption | None:
        """The option's client half for one client round, or None (off, or no client half)."""
        if self.client is None:
            return None
        module, _, function = self.client.partition(":")
        return getattr(importlib.import_module(module), function)(cfg, sent, kept)
