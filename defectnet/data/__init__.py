"""DefectNet data."""
