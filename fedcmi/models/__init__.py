"""Encoders, fusion heads, the two-projector FedCMI model and the concat baseline."""

from fedcmi.models.build import ModelSpec, build_model, model_for, model_key, model_options
from fedcmi.models.concat_model import ConcatModel
from fedcmi.models.fedcmi_model import FedCMIModel

__all__ = ["ConcatModel", "FedCMIModel", "ModelSpec", "build_model", "model_for", "model_key", "model_options"]
