"""Every local method by name (``strategy=NAME``): its :class:`~fedcmi.methods.spec.MethodSpec`, here, and
its code, one file in this package that the spec's ``builder`` names; likewise every label-skew remedy
(:class:`~fedcmi.methods.spec.RemedySpec`, its code in ``remedies/``) and every run option any method can
switch on (:class:`~fedcmi.methods.spec.OptionSpec`: its server step, its client half, its records).

Light on purpose: the specs import nothing heavy (no torch), so a configuration is resolved and checked,
and ``fedcmi methods`` answers, before torch is imported; a method's code is imported when it is built.
Every method uses the same data, partitions, sampling, per-modality aggregation and evaluation, so
differences between them come from the method alone.
"""

from __future__ import annotations

from fedcmi.errors import ConfigError, did_you_mean
from fedcmi.methods.spec import POSITIVE, MethodSpec, OptionSpec, RemedySpec, equals

# Label-skew remedies any method switches on by their keys, one file each in fedcmi/methods/remedies/. Every
# CE term of a method sees the logits as the remedies on adjust them, in this order; their loss terms are
# added in this order too.
REMEDIES: dict[str, RemedySpec] = {spec.name: spec for spec in (
    RemedySpec("logit-adjust", "FedLC / logit adjustment: CE(z + tau log pi_local, y)",
               "fedcmi.methods.remedies.logit_adjustment:build", ("logit-adjust",)),
    RemedySpec("restricted-softmax", "FedRS: logits of the classes a client lacks scaled by alpha",
               "fedcmi.methods.remedies.restricted_softmax:build", ("restricted-softmax",)),
    RemedySpec("ntd", "FedNTD: not-true distillation from the frozen global model, weight ntd-beta",
               "fedcmi.methods.remedies.not_true_distillation:build", ("ntd-beta", "ntd-temperature")),
)}
REMEDY_KEYS = tuple(key for spec in REMEDIES.values() for key in spec.keys)
# CCVR, read by the server for every method. fedcmi.federated.calibration.KEYS is the same tuple (tests check).
CCVR_KEYS = ("ccvr-steps", "ccvr-samples", "ccvr-lr", "ccvr-moments")
# SCAFFOLD's switch, read by clients (the correction) and the server (its step) for every method
SCAFFOLD_KEYS = ("scaffold",)
EVERY_METHOD_KEYS = (*REMEDY_KEYS, *CCVR_KEYS, *SCAFFOLD_KEYS)

# Run options any method can switch on by their keys, after the method's own server steps and in this order
# (SCAFFOLD moves its control variate and with scaffold-lr the weights; CCVR pools moments and calibrates the
# evaluated copy only; the optimiser steps the global weights). An option with client state names its client
# half and its records (``OptionSpec``); the ClientApp, the message format and the reply checks loop over these.
OPTIONS: dict[str, OptionSpec] = {spec.name: spec for spec in (
    OptionSpec("scaffold", "SCAFFOLD: control variates c (server) and c_i (each node) correct the local gradient",
               "fedcmi.federated.scaffold:build", "fedcmi.methods.scaffold:build_client",
               sent="scaffold-c", reply="scaffold-delta-c", kept="scaffold-ci"),
    OptionSpec("ccvr", "CCVR: the fusion head calibrated on virtual features", "fedcmi.federated.ccvr:build"),
    OptionSpec("server-opt", "FedAdam / FedYogi / FedAdagrad on the aggregate", "fedcmi.federated.server_opt:build"),
)}

CROSS_ENTROPY = "fedcmi.methods.fedavg:build"  # fedavg.py: FedAvg's cross-entropy
FEDCMI_USES = ("proximal-mu", "lambda-self", "lambda-cmi", "class-wise-temperature", "temperature", "gamma",
               "dominance", "warmup-rounds", "lambda-cross", "unimodal-zero-fill", "normalize-loss",
               "dominance-momentum", "tau-min", "ratio-mean")


def _fedcmi(name: str, summary: str, defaults: dict | None = None, defining: dict | None = None,
            single_projector: bool = False) -> MethodSpec:
    """FedCMI (fedcmi.py) and its ablations: parameters of the same objective."""
    builder = "fedcmi.methods.fedcmi:" + ("build_single_projector" if single_projector else "build")
    return MethodSpec(name, summary, builder, model="fedcmi", uses=FEDCMI_USES,
                      defaults={"lambda-cross": 0.0, **(defaults or {})}, defining=defining or {},
                      infiltration_path=not single_projector)


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("fedavg", "FedAvg: concat model, cross-entropy, missing modality zero-filled", CROSS_ENTROPY,
               uses=("proximal-mu",), defaults={"proximal-mu": 0.0}),
    # FedProx (Li et al., 2020): FedAvg's objective plus the proximal term mu/2 ||w - w_global||^2
    MethodSpec("fedprox", "FedProx: FedAvg plus the proximal term (proximal-mu)", CROSS_ENTROPY,
               uses=("proximal-mu",), defining={"proximal-mu": POSITIVE}),
    MethodSpec("unimodal-a", "first modality only, trained on the clients that hold it", CROSS_ENTROPY,
               modalities=("a",), uses=("proximal-mu",), defaults={"proximal-mu": 0.0}),
    MethodSpec("unimodal-b", "second modality only, trained on the clients that hold it", CROSS_ENTROPY,
               modalities=("b",), uses=("proximal-mu",), defaults={"proximal-mu": 0.0}),
    _fedcmi("fedcmi", "FedCMI: two projectors, self CE, infiltration distillation, class-wise temperatures, "
            "proximal term, server-side dominance"),
    # fedcmi-plus (ours): FedCMI whose multimodal clients also train the fusion head on the unimodal (self,
    # infiltration) pairs, so the head accepts infiltration features in the missing slot
    MethodSpec("fedcmi-plus", "fedcmi's own variant, not the paper's: FedCMI + multimodal clients also train the "
               "fusion head on the unimodal (self, "
               "infiltration) pairs, so infiltration features are accepted in the missing slot (lambda-cross)",
               "fedcmi.methods.fedcmi:build", model="fedcmi", uses=FEDCMI_USES,
               defining={"lambda-cross": POSITIVE}, infiltration_path=True, ours=True),
    _fedcmi("fedcmi-noinf", "ablation: no infiltration distillation", {"lambda-cmi": 0.0},
            {"lambda-cmi": equals(0.0)}),
    _fedcmi("fedcmi-single", "ablation: single projector (distil into the weak self projector; unimodal clients "
            "zero-fill)", single_projector=True),
    _fedcmi("fedcmi-fixedtemp", "ablation: fixed temperature instead of class-wise",
            {"class-wise-temperature": False}, {"class-wise-temperature": equals(False)}),
    _fedcmi("fedcmi-noprox", "ablation: no proximal term", {"proximal-mu": 0.0}, {"proximal-mu": equals(0.0)}),
    _fedcmi("fedcmi-local", "ablation: the authors' per-batch local dominance instead of the server's global one",
            {"dominance": "local"}, {"dominance": equals("local")}),
    MethodSpec("ogm-ge", "OGM-GE on multimodal clients: dominant encoder's gradients scaled by "
               "1 - tanh(alpha * ratio) plus Gaussian noise (FedAvg otherwise)", "fedcmi.methods.ogm_ge:build",
               uses=("ogm-alpha", "proximal-mu"), defaults={"proximal-mu": 0.0},
               defining={"fusion": equals("concat")}),  # the per-modality logits split the concat head's fc
    MethodSpec("pmr", "PMR on multimodal clients: prototype cross-entropy for the weak modality "
               "(FedAvg otherwise)", "fedcmi.methods.pmr:build",
               uses=("pmr-alpha", "pmr-momentum", "proximal-mu"), defaults={"proximal-mu": 0.0}),
    # fedavg-la: CE(z + log pi_local, y) (Menon et al., ICLR 2021; FedLC-style calibration), i.e. FedAvg with
    # the logit-adjust remedy on (fedcmi.methods.remedies.logit_adjustment), which any method can switch on
    MethodSpec("fedavg-la", "FedAvg with logit-adjusted local CE, CE(z + log pi_local, y) (FedLC-style)",
               CROSS_ENTROPY, uses=("proximal-mu",), defaults={"proximal-mu": 0.0, "logit-adjust": 1.0},
               defining={"logit-adjust": POSITIVE}),
)}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The spec of ``strategy=name``; an unknown name is a one-line error listing the known ones."""
    if name not in METHODS:
        raise ConfigError(f"strategy={name!r}: must be one of {', '.join(METHOD_NAMES)}"
                          + did_you_mean(name, METHOD_NAMES))
    return METHODS[name]
