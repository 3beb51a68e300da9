"""DefectNet bench."""
