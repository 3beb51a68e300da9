"""DefectNet runtime."""
