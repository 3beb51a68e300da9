"""DefectNet train."""
