"""The keys of an evaluation summary (``eval/<stem>.json``), defined once.

The evaluation writes summaries with these names (:mod:`unirobust.evaluation.summary`) and the
report reads them back with the same names (:mod:`unirobust.report`), so neither side can drift
from the other. A summary is a JSON object::

    {suite, model_hash, dataset, split, n_points, points, seed, batch_size,   # what was measured
     groups: ["clean", "threats", "union", "calibration", "corruptions"],     # which groups ran
     clean_acc, threats, threat_labels, union_only, robust_acc, union_acc,    # clean / threats
     wall_time_s,
     calibration: {ece, mce, nll, brier, acc, n_bins,                         # when asked for
                   reliability: {bin_lower, bin_upper, bin_count, bin_accuracy, bin_confidence},
                   temperature, ece_scaled, nll_scaled},                      # with a val split
     corruptions: {corruptions, severities, per_corruption: {name: {"1": acc, ...}},
                   mean_per_corruption: {name: acc}, mean_acc, seed, pad_mode, backend},
     checkpoint, model_path, session_s}                                       # added by pipeline

Accuracies are fractions in [0, 1]; an undefined number is ``null``.
"""

from __future__ import annotations


class Summary:
    """Top-level keys."""

    SUITE = "suite"
    MODEL_HASH = "model_hash"
    DATASET = "dataset"
    SPLIT = "split"
    N_POINTS = "n_points"
    POINTS = "points"
    SEED = "seed"
    BATCH_SIZE = "batch_size"
    GROUPS = "groups"
    CLEAN_ACC = "clean_acc"
    THREATS = "threats"
    THREAT_LABELS = "threat_labels"
    UNION_ONLY = "union_only"
    ROBUST_ACC = "robust_acc"
    UNION_ACC = "union_acc"
    WALL_TIME_S = "wall_time_s"
    CALIBRATION = "calibration"
    CORRUPTIONS = "corruptions"
    CHECKPOINT = "checkpoint"
    MODEL_PATH = "model_path"
    SESSION_S = "session_s"
    PROCESSES = "processes"


#: Keys every summary has (a JSON file without them is not an evaluation summary).
REQUIRED = (
    Summary.SUITE,
    Summary.MODEL_HASH,
    Summary.DATASET,
    Summary.SPLIT,
    Summary.N_POINTS,
    Summary.POINTS,
    Summary.SEED,
    Summary.BATCH_SIZE,
    Summary.THREATS,
    Summary.THREAT_LABELS,
    Summary.UNION_ONLY,
    Summary.CLEAN_ACC,
    Summary.ROBUST_ACC,
    Summary.UNION_ACC,
    Summary.WALL_TIME_S,
)


class Group:
    """Names of the metric groups listed under ``groups``."""

    CLEAN = "clean"
    THREATS = "threats"
    UNION = "union"
    CALIBRATION = "calibration"
    CORRUPTIONS = "corruptions"


class Calibration:
    """Keys of ``summary["calibration"]``."""

    ECE = "ece"
    MCE = "mce"
    NLL = "nll"
    BRIER = "brier"
    ACC = "acc"
    N_BINS = "n_bins"
    RELIABILITY = "reliability"
    TEMPERATURE = "temperature"
    ECE_SCALED = "ece_scaled"
    NLL_SCALED = "nll_scaled"


class Reliability:
    """Keys of ``summary["calibration"]["reliability"]`` (lists of length ``n_bins``)."""

    LOWER = "bin_lower"
    UPPER = "bin_upper"
    COUNT = "bin_count"
    ACCURACY = "bin_accuracy"
    CONFIDENCE = "bin_confidence"


class Corruptions:
    """Keys of ``summary["corruptions"]``."""

    NAMES = "corruptions"
    SEVERITIES = "severities"
    PER_CORRUPTION = "per_corruption"
    MEAN_PER_CORRUPTION = "mean_per_corruption"
    MEAN_ACC = "mean_acc"
    SEED = "seed"
    PAD_MODE = "pad_mode"
    BACKEND = "backend"
