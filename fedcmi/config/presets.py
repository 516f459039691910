"""Named presets: sets of configuration keys applied under a config file and ``key=value`` overrides.

``paper`` is the FedCMI setting of the authors' code base (its argument defaults): 10 clients, 2 sampled per
round, 40 rounds of 10 local epochs, SGD lr 1e-3 / batch 16, Dirichlet alpha 5, half the clients
multimodal, ResNet-18 encoders with 512-wide linear projectors, proximal mu 1, test batch 256. The paper
does not state its per-table values, so these are the code's defaults.

A preset sits under the method's own defaults: ``--preset paper strategy=fedavg`` trains FedAvg without the
proximal term (``docs/configuration.md``).
"""

from __future__ import annotations

from typing import Any

from fedcmi.errors import ConfigError, did_you_mean

# Under every preset of `fedcmi simulate` and `fedcmi bench` (never of a ServerApp run by `flwr run` or a
# SuperLink). In a simulation every client runs the researcher's own code on one machine: nobody can send a
# hostile update, so the update screen could only drop honest ones, and measured over honest bench runs at
# alpha 0.1 it does (docs/robustness.md). Deployments keep RunConfig's default; attack studies set it.
SIMULATION_DEFAULTS: dict[str, Any] = {"update-norm-multiple": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "num-clients": 10, "clients-per-round": 2, "num-server-rounds": 40, "local-epochs": 10,
        "lr": 0.001, "momentum": 0.9, "weight-decay": 0.0001, "batch-size": 16, "dirichlet-alpha": 5.0,
        "multimodal-ratio": 0.5, "encoder": "resnet18", "feature-dim": 512, "projector": "linear",
        "proximal-mu": 1.0, "lambda-self": 2.0, "lambda-cmi": 1.0, "gamma": 2.0, "warmup-rounds": 1,
        "eval-batch-size": 256,
    },
}


def preset_values(name: str | None) -> dict[str, Any]:
    """The keys of a preset (empty for ``None``)."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: must be one of {', '.join(PRESETS)}" + did_you_mean(name, PRESETS))
    return dict(PRESETS[name])
