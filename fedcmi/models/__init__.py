"""Encoders, the two-projector FedCMI model and the concat baseline."""

from fedcmi.models.fedcmi_model import ConcatModel, FedCMIModel, build_model, group_of, model_options

__all__ = ["ConcatModel", "FedCMIModel", "build_model", "group_of", "model_options"]
