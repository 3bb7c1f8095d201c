"""Precision as a measured step: calibration data, FP16 range analysis, INT8 Q/DQ, accuracy reports."""

from .calibrate import calibrate_bundle
from .report import AccuracyReport

__all__ = ["AccuracyReport", "calibrate_bundle"]
