"""The one error hierarchy of DefectNet.

Every error a user can see derives from :class:`DefectNetError`. Its message says what
was wrong *and* how to fix it, so command-line tools can print ``str(err)`` and exit
without a traceback.
"""

from __future__ import annotations


class DefectNetError(Exception):
    """Base class of every DefectNet error shown to users."""


class ConfigError(DefectNetError, ValueError):
    """A configuration value is invalid (wrong range, wrong combination)."""


class DataError(DefectNetError):
    """A data set, annotation file or image is missing, corrupt or inconsistent."""


class CheckpointError(DefectNetError):
    """A checkpoint or run folder is missing, corrupt or does not match the model."""


class ExportError(DefectNetError):
    """Exporting a graph failed or its parity check against PyTorch failed."""


class EngineError(DefectNetError):
    """An engine folder is missing files, is corrupt, or does not match this machine."""


class BackendUnavailableError(DefectNetError):
    """An optional backend (TensorRT, a CUDA device) is not available on this machine."""
