"""DefectNet evaluation."""
