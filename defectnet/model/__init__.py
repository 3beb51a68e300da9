"""DefectNet model."""
