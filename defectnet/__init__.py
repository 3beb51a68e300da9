"""DefectNet: a shared-backbone defect gate + Cascade R-CNN detector, deployable.

Sub-packages: ``data`` (synthetic generator, COCO loader, transforms), ``model``
(backbone + gate, FPN, RPN, cascade heads, baselines), ``train`` (loss schedules,
trainer), ``evaluation`` (mAP, F1, ATT), ``export`` (ONNX graphs), ``calibration``
(INT8/FP16), ``runtime`` (backends + conditional pipeline), ``bench`` (ATT tables).
"""

from defectnet.errors import DefectNetError

__version__ = "0.1.0"

__all__ = ["DefectNetError", "__version__"]
