"""unirobust.analysis: post-hoc analyses of trained models.

* :mod:`~unirobust.analysis.calibration` -- ECE, MCE, NLL, Brier, reliability bins and
  temperature scaling.
"""

from unirobust.analysis.calibration import (
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    reliability_bins,
)

__all__ = ["apply_temperature", "calibration_metrics", "fit_temperature", "reliability_bins"]
