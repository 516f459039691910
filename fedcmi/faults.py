"""Test-only fault injection: the ``inject-faults`` config key names clients that misbehave.

Syntax: comma-separated ``kind:partition`` or ``kind:partition@round`` (every round when no round is given),
e.g. ``raise:1,hang:2@3,nan:0``. Kinds that act before training: ``raise`` (the ClientApp raises), ``hang``
(it sleeps past ``round-timeout``), ``exit`` (its process dies). Kinds that corrupt the reply: ``nan``,
``inf``, ``shape``, ``dtype``, ``missing`` (a parameter group left out), ``stats`` (class statistics out of
range), ``norm`` (a huge update). The reliability tests use it to show a run survives each fault.
"""

from __future__ import annotations

from dataclasses import dataclass

BEFORE_TRAINING = ("raise", "hang", "exit")
CORRUPTIONS = ("nan", "inf", "shape", "dtype", "missing", "stats", "norm")
KINDS = BEFORE_TRAINING + CORRUPTIONS


@dataclass(frozen=True)
class Fault:
    kind: str
    partition: int
    round: int | None = None


def parse_faults(spec: str) -> list[Fault]:
    """Parse the ``inject-faults`` string; raises ValueError naming the bad item."""
    faults = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, sep, rest = item.partition(":")
        if not sep or kind not in KINDS:
            raise ValueError(f"{item!r}: expected kind:partition[@round] with kind one of {', '.join(KINDS)}")
        part, _, rnd = rest.partition("@")
        try:
            faults.append(Fault(kind, int(part), int(rnd) if rnd else None))
        except ValueError:
            raise ValueError(f"{item!r}: partition and round must be integers") from None
    return faults


def faults_for(spec: str, partition: int, server_round: int) -> set[str]:
    """The fault kinds that apply to this client in this round."""
    return {f.kind for f in parse_faults(spec)
            if f.partition == partition and (f.round is None or f.round == server_round)}
