"""unirobust.evaluation: per-sample robustness evaluation (multinorm.md §8).

* :func:`evaluate` -- clean pass, then an attack suite per threat, resumable, union-only mode.
* :data:`SUITES` -- ``aa-standard``, ``aa-apgd`` (paper protocol), ``fast`` (monitoring).
* :class:`EvalResults` -- the per-sample table; union and subset metrics are recomputed.
* :func:`run_autoattack` -- the pyautoattack adapter (eval mode, fp32, RNG preserved).
* :func:`run_sanity_checks` / :class:`EvaluationWarning` -- AutoAttack-style evaluation checks.
* :func:`evaluate_corruptions` -- ImageNet-C style corruptions (optional extra ``corruptions``).
"""

from unirobust.evaluation.autoattack import (
    AutoAttackOutput,
    run_autoattack,
    run_autoattack_detailed,
)
from unirobust.evaluation.checks import EvaluationWarning, check_black_box, run_sanity_checks
from unirobust.evaluation.corruptions import CORRUPTIONS, corrupt_images, evaluate_corruptions
from unirobust.evaluation.results import NOT_ATTACKED, EvalResults, describe_points, model_hash
from unirobust.evaluation.runner import UNION_ORDER, evaluate, order_threats
from unirobust.evaluation.suites import SUITES, Suite, SuiteOutput, get_suite

__all__ = [
    "CORRUPTIONS",
    "NOT_ATTACKED",
    "SUITES",
    "UNION_ORDER",
    "AutoAttackOutput",
    "EvalResults",
    "EvaluationWarning",
    "Suite",
    "SuiteOutput",
    "check_black_box",
    "corrupt_images",
    "describe_points",
    "evaluate",
    "evaluate_corruptions",
    "get_suite",
    "model_hash",
    "order_threats",
    "run_autoattack",
    "run_autoattack_detailed",
    "run_sanity_checks",
]
