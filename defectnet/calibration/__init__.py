"""DefectNet calibration."""
