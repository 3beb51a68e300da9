"""DefectNet model: ResNet backbone + gate, FPN, RPN, cascade RoI heads, baselines.

Public API::

    ModelConfig, ClassifierConfig          validated, JSON-able configs
    DefectNet                              features() / detect() / inference() / losses()
    ImageClassifier, TwoModel              the two-model baseline
    build_model, build_classifier, build_two_model
    save_weights, load_weights, load_model, saved_config   (safetensors)
"""

from defectnet.model.build import (
                                   build_classifier,
                                   build_model,
                                   build_two_model,
                                   load_model,
                                   load_weights,
                                   save_weights,
                                   saved_config,
)
from defectnet.model.classifier import ImageClassifier
from defectnet.model.config import ClassifierConfig, ModelConfig
from defectnet.model.defectnet import DefectNet
from defectnet.model.two_model import TwoModel

__all__ = [
    "ClassifierConfig",
    "DefectNet",
    "ImageClassifier",
    "ModelConfig",
    "TwoModel",
    "build_classifier",
    "build_model",
    "build_two_model",
    "load_model",
    "load_weights",
    "save_weights",
    "saved_config",
]
