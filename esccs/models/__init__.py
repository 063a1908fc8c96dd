"""Models: a multi-band ResNet family, single-modality classifiers, the dual-branch target and their checkpoints.

Front door: :func:`create_model` (``list_models()`` lists the names). Checkpoints are safetensors weights plus a JSON
sidecar with the resolved :class:`ModelConfig` (:func:`save_checkpoint` / :func:`load_checkpoint`); no pickle.
"""

from esccs.models.checkpoint import checkpoint_sha256 as checkpoint_sha256
from esccs.models.checkpoint import load_checkpoint as load_checkpoint
from esccs.models.checkpoint import save_checkpoint as save_checkpoint
from esccs.models.classifier import Classifier as Classifier
from esccs.models.dual import DualBranchNet as DualBranchNet
from esccs.models.dual import ExportWrapper as ExportWrapper
from esccs.models.dual import modality_weights as modality_weights
from esccs.models.factory import ModelConfig as ModelConfig
from esccs.models.factory import create_model as create_model
from esccs.models.factory import create_model_from_config as create_model_from_config
from esccs.models.factory import describe_models as describe_models
from esccs.models.factory import list_models as list_models
from esccs.models.factory import register_model as register_model
from esccs.models.measure import count_parameters as count_parameters
from esccs.models.measure import model_flops as model_flops
from esccs.models.resnet import ResNet as ResNet

__all__ = [
    "Classifier", "DualBranchNet", "ExportWrapper", "ModelConfig", "ResNet", "checkpoint_sha256", "count_parameters",
    "create_model", "create_model_from_config", "describe_models", "list_models", "load_checkpoint",
    "model_flops", "modality_weights", "register_model", "save_checkpoint",
]
