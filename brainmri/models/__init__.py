"""Networks: the study CNNs and any timm model behind one factory."""

from brainmri.models.cnn import STUDY_CNNS, StudyCNN
from brainmri.models.registry import build_model, check_pretrained_source, count_parameters, list_models, register_model

__all__ = [
    "STUDY_CNNS",
    "StudyCNN",
    "build_model",
    "check_pretrained_source",
    "count_parameters",
    "list_models",
    "register_model",
]
