"""The two modality slots, the client kinds, and which parameter group a state-dict key belongs to.

Written once: every other module asks here which modalities a kind holds and which group a key is in.
Parameter names carry their modality in the first component (``enc_a``, ``self_b``, ...); the rest
(``fusion``) is shared by every client.
"""

from __future__ import annotations

A, B = "a", "b"  # the two modality slots: a client's tensors, a data set's columns, a parameter's suffix
MM = "mm"  # the kind of a client that holds both; one that holds one has that slot's name as its kind
MODALITIES = (A, B)
KINDS = (MM, A, B)
KIND_MODALITIES: dict[str, tuple[str, ...]] = {MM: (A, B), A: (A,), B: (B,)}
SHARED = "shared"


def modalities_of(kind: str) -> tuple[str, ...]:
    """``"mm"`` -> ``("a", "b")``; ``"a"`` -> ``("a",)``."""
    return KIND_MODALITIES[kind]


def kind_of(modalities: set[str] | tuple[str, ...]) -> str:
    """The kind of a client holding these modality codes."""
    held = set(modalities)
    if held == set(MODALITIES):
        return MM
    if len(held) == 1 and held <= set(MODALITIES):
        return next(iter(held))
    raise ValueError(f"a client holds one or both of {MODALITIES}, not {sorted(held)}")


def group_of(key: str) -> str:
    """``"a"``, ``"b"`` or ``"shared"`` for a state-dict key."""
    head = key.split(".", 1)[0]
    for m in MODALITIES:
        if head.endswith(f"_{m}"):
            return m
    return SHARED


def trained_groups(kind: str, method_modalities: tuple[str, ...]) -> tuple[str, ...]:
    """The groups a client of ``kind`` trains and sends under a method that trains ``method_modalities``."""
    return (*[m for m in modalities_of(kind) if m in method_modalities], SHARED)
