"""unirobust.analysis: post-hoc analyses of trained models (spec lpft.md §3-4).

* :mod:`~unirobust.analysis.calibration` -- ECE, MCE, NLL, Brier, reliability bins and
  temperature scaling.
* :mod:`~unirobust.analysis.features` -- head norms, feature change Diff(F), mean cosine CS(F)
  and the Fisher discriminant ratio FDR(F).
* :mod:`~unirobust.analysis.ntk` -- the P/F decomposition of the NTK via ``torch.func``.
"""

from unirobust.analysis.calibration import (
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    reliability_bins,
    temperature_scaling,
)
from unirobust.analysis.features import (
    cosine_similarity_mean,
    extract_features,
    feature_change,
    fisher_discriminant_ratio,
    head_norms,
)
from unirobust.analysis.ntk import NTKResult, ntk_decomposition

__all__ = [
    "NTKResult",
    "apply_temperature",
    "calibration_metrics",
    "cosine_similarity_mean",
    "extract_features",
    "feature_change",
    "fisher_discriminant_ratio",
    "fit_temperature",
    "head_norms",
    "ntk_decomposition",
    "reliability_bins",
    "temperature_scaling",
]
