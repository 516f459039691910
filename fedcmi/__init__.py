"""fedcmi: multimodal federated learning under modality imbalance (FedCMI) on Flower."""

import os

# Never send telemetry, and never phone home for updates (flwr and flwr-datasets read these).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

__version__ = "0.1.0"
