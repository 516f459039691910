"""Every local method by name (``strategy=NAME``): a method is one file in this package plus one line here.

Every method uses the same data, partitions, sampling, per-modality aggregation and evaluation, so
differences between them come from the method alone.
"""

from __future__ import annotations

from fedcmi.errors import ConfigError
from fedcmi.methods import fedavg, fedavg_la, fedcmi, fedcmi_plus, fedprox, ogm_ge, pmr, unimodal
from fedcmi.methods.base import MethodSpec

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    fedavg.SPEC,
    fedprox.SPEC,
    unimodal.SPEC_A,
    unimodal.SPEC_B,
    fedcmi.SPEC,
    fedcmi_plus.SPEC,
    *fedcmi.ABLATIONS,
    ogm_ge.SPEC,
    pmr.SPEC,
    fedavg_la.SPEC,
)}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The spec of ``strategy=name``; an unknown name is a one-line error listing the known ones."""
    if name not in METHODS:
        raise ConfigError(f"strategy={name!r}: must be one of {', '.join(METHOD_NAMES)}")
    return METHODS[name]
