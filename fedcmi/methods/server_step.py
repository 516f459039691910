"""A method's server half: :class:`ServerStep`, small overridable steps the generic strategy calls each round.

Why: the strategy (``server/strategy.py``) serves every method with the same discovery, sampling, reply
acceptance, screening and aggregation; what differs between methods on the server (the guidance sent with
the weights, the check of what a run option's client half sent back, what is done with the accepted replies
after aggregation, the state a checkpoint must hold, a calibration of the evaluated model) is a step here, as
Flower's ``FedAvg`` variants override one method each. A run's steps are composed into one :class:`ServerSide`
(``fedcmi.federated.server_side`` builds it from the method's spec and the run options' registry lines), the
only thing the strategy and the checkpoint talk to.

No Flower, no torch: arrays are numpy, a calibration is a callable the server applies to its model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedcmi.dominance import ClassStats, Dominance, Guidance
from fedcmi.methods.registry import OPTIONS

if TYPE_CHECKING:
    from fedcmi.federated.calibration import FeatureStats

Arrays = dict[str, np.ndarray]
Records = Mapping[str, Mapping[str, np.ndarray]]  # option name -> parameter name -> array
# A calibration of the evaluated model: (model, server_round) -> the model to evaluate and save (torch modules)
Calibrate = Callable[[Any, int], Any]


class Reply(Protocol):
    """What a step may read of one accepted reply (``server.acceptance.Accepted``), in partition order."""

    who: str
    partition_id: int
    stats: ClassStats | None
    features: FeatureStats | None
    records: Records  # the run options' reply records by option name, each checked by its step


def corrupt(what: str) -> str:
    """The reason for a malformed state field (``state()`` could never have written it)."""
    return f"is corrupt ({what})"


def misfit(num_classes: int, what: str) -> str:
    """The reason for a well-formed state field that does not fit the run resuming it."""
    return f"does not fit the run's {num_classes} classes ({what})"


class ServerStep:
    """One part of a method's server side; every hook does nothing by default, a step overrides what it needs.

    ``state_keys`` names the top-level keys of the strategy state the step owns (one step per key): its
    :meth:`state` writes them, :meth:`check_state` validates them, :meth:`load_state` reads them.
    """

    name = "step"
    state_keys: tuple[str, ...] = ()

    def guidance(self, server_round: int, guidance: Guidance) -> Guidance:
        """What travels with the weights to this round's clients, given the previous steps' guidance."""
        return guidance

    def reported(self) -> Dominance | None:
        """The dominance the round's metrics row reports (the guidance the latest statistics decided)."""
        return None

    def check_reply(self, arrays: Mapping[str, np.ndarray] | None, current: Mapping[str, np.ndarray],
                    held: tuple[str, ...], group_of: Callable[[str], str]) -> str | None:
        """Why a reply is refused (one line), or None: the step of a run option judges the arrays the option's
        client half sent back (``arrays``, None when the reply has no record under the step's name; their
        declared shapes and dtypes were checked against ``current``, the global model, when it was read).
        ``held``: the modalities the client trains; ``group_of``: a key's group."""
        return None

    def after_aggregation(self, server_round: int, current: Mapping[str, np.ndarray], new: Arrays,
                          updated: frozenset[str], replies: Sequence[Reply]) -> Arrays:
        """The next global arrays from the aggregated ``new`` (``updated``: the keys some client updated) and
        the accepted replies; the default keeps ``new``."""
        return new

    def asks_moments(self) -> bool:
        """Whether the evaluate phase should ask multimodal nodes for moments under the new weights."""
        return False

    def take_moments(self, server_round: int, good: list[tuple[str, FeatureStats]],
                     faults: list[str]) -> tuple[int, int]:
        """The checked moments replies of the evaluate phase; returns (replies used, samples they count)."""
        return 0, 0

    def calibration(self) -> Calibrate | None:
        """A calibration of the evaluated model bound to the current state, or None (evaluate as aggregated).
        Bound now because the round is recorded later, while the next round changes the step."""
        return None

    def state(self) -> dict[str, Any]:
        """The JSON-able state a checkpoint must hold to continue exactly (only ``state_keys``)."""
        return {}

    def check_state(self, state: Mapping[str, Any], num_classes: int | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
        """Why ``state`` cannot be loaded (see :func:`corrupt`, :func:`misfit`), or None. ``num_classes`` and
        ``shapes`` (the run's model) are given when known."""
        return None

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (already checked)."""


class ServerSide:
    """A run's server steps in order: guidance and arrays pass through each; state is the union of theirs.

    The one serialiser (:meth:`state`) and the one validator (:meth:`check_state`) of the method-specific
    part of a checkpoint: the strategy and ``fedcmi.runs.checkpoint`` both call these.
    """

    def __init__(self, steps: Sequence[ServerStep]) -> None:
        keys = [k for s in steps for k in s.state_keys]
        if len(keys) != len(set(keys)):
            raise ValueError(f"server steps share a state key: {keys}")
        self.steps = tuple(steps)

    def find(self, kind: type[ServerStep]) -> Any:
        """The step of class ``kind`` (None if the run has none)."""
        return next((s for s in self.steps if isinstance(s, kind)), None)

    def guidance(self, server_round: int) -> Guidance:
        g = Guidance()
        for step in self.steps:
            g = step.guidance(server_round, g)
        return g

    def reported(self) -> Dominance | None:
        return next((r for r in (s.reported() for s in self.steps) if r is not None), None)

    def check_reply(self, records: Records, current: Mapping[str, np.ndarray], held: tuple[str, ...],
                    group_of: Callable[[str], str]) -> str | None:
        """A reply's option records: one whose option has no step in this run (off) is refused, then every step
        checks its own (the first reason wins)."""
        names = {s.name for s in self.steps}
        for name in sorted(records):
            if name not in names:
                return f"unexpected record {OPTIONS[name].reply!r} ({name} is off)"
        for step in self.steps:
            reason = step.check_reply(records.get(step.name), current, held, group_of)
            if reason:
                return reason
        return None

    def after_aggregation(self, server_round: int, current: Mapping[str, np.ndarray], new: Arrays,
                          updated: frozenset[str], replies: Sequence[Reply]) -> Arrays:
        for step in self.steps:
            new = step.after_aggregation(server_round, current, new, updated, replies)
        return new

    def asks_moments(self) -> bool:
        return any(s.asks_moments() for s in self.steps)

    def take_moments(self, server_round: int, good: list[tuple[str, FeatureStats]],
                     faults: list[str]) -> tuple[int, int]:
        used = examples = 0
        for step in self.steps:
            if step.asks_moments():
                used, examples = step.take_moments(server_round, good, faults)
        return used, examples

    def calibration(self) -> Calibrate | None:
        parts = [c for c in (s.calibration() for s in self.steps) if c is not None]
        if not parts:
            return None

        def calibrate(model: Any, server_round: int) -> Any:
            for part in parts:
                model = part(model, server_round)
            return model

        return calibrate

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in self.steps:
            out.update(step.state())
        return out

    def check_state(self, state: Mapping[str, Any], num_classes: int | None = None,
                    shapes: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
        for step in self.steps:
            reason = step.check_state(state, num_classes, shapes)
            if reason:
                return reason
        return None

    def load_state(self, state: Mapping[str, Any], num_classes: int | None = None) -> None:
        """Check, then load every step's part; a bad state is a ValueError naming the field."""
        reason = self.check_state(state, num_classes)
        if reason:
            raise ValueError(f"strategy state {reason}")
        for step in self.steps:
            step.load_state(state)
