"""DefectNet export."""
