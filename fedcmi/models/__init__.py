"""Encoders, fusion heads, the two-projector FedCMI model and the concat baseline."""

from fedcmi.models.build import ModelSpec, build_model, model_for, model_options
from fedcmi.models.concat_model import ConcatModel
from fedcmi.models.fedcmi_model import FedCMIModel
from fedcmi.models.modalities import KIND_MODALITIES, MODALITIES, group_of, modalities_of

__all__ = ["KIND_MODALITIES", "MODALITIES", "ConcatModel", "FedCMIModel", "ModelSpec", "build_model", "group_of",
           "modalities_of", "model_for", "model_options"]
