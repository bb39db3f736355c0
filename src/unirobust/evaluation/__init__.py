"""unirobust.evaluation: per-sample evaluation as metric groups (multinorm.md §8, DESIGN.md).

Every group reads or writes one per-sample table (:class:`EvalResults`); the summary is
recomputed from the table (:func:`summarize`, keys in :mod:`~unirobust.evaluation.keys`).

* ``clean`` -- :func:`clean_logits`: float32 logits of every point, kept in the table.
* ``threats``/``union`` -- :func:`evaluate`: the clean pass, then an attack suite per threat
  (:data:`SUITES`: ``aa-standard``, ``aa-apgd``, ``fast``), resumable, union-only mode; with no
  threats it returns the clean table. Union is a per-sample AND recomputed from the table. The
  first attacked points' adversarial inputs are kept (:class:`AdvExamples`) for figures.
* ``calibration`` -- :func:`add_calibration`: ECE/MCE/NLL/Brier/reliability bins from the stored
  logits; temperature fitted on stored validation logits only.
* ``corruptions`` -- :func:`add_corruptions`: per-sample correctness on ImageNet-C style
  corrupted copies (optional extra ``corruptions``); :func:`evaluate_corruptions` for accuracies.
* :func:`run_autoattack` -- the pyautoattack adapter (eval mode, fp32, RNG preserved).
* :func:`run_sanity_checks` / :class:`EvaluationWarning` -- AutoAttack-style evaluation checks.
"""

from unirobust.evaluation.autoattack import (
    AutoAttackOutput,
    run_autoattack,
    run_autoattack_detailed,
)
from unirobust.evaluation.calibration import add_calibration, calibration_summary
from unirobust.evaluation.checks import EvaluationWarning, check_black_box, run_sanity_checks
from unirobust.evaluation.clean import clean_logits
from unirobust.evaluation.corruptions import (
    CORRUPTIONS,
    add_corruptions,
    corrupt_images,
    corruption_summary,
    evaluate_corruptions,
)
from unirobust.evaluation.results import (
    NOT_ATTACKED,
    AdvExamples,
    EvalResults,
    describe_points,
    load_examples,
    model_hash,
)
from unirobust.evaluation.runner import UNION_ORDER, evaluate, order_threats, threat_summary
from unirobust.evaluation.suites import SUITES, Suite, SuiteOutput, get_suite
from unirobust.evaluation.summary import summarize

__all__ = [
    "CORRUPTIONS",
    "NOT_ATTACKED",
    "SUITES",
    "UNION_ORDER",
    "AdvExamples",
    "AutoAttackOutput",
    "EvalResults",
    "EvaluationWarning",
    "Suite",
    "SuiteOutput",
    "add_calibration",
    "add_corruptions",
    "calibration_summary",
    "check_black_box",
    "clean_logits",
    "corrupt_images",
    "corruption_summary",
    "describe_points",
    "evaluate",
    "evaluate_corruptions",
    "get_suite",
    "load_examples",
    "model_hash",
    "order_threats",
    "run_autoattack",
    "run_autoattack_detailed",
    "run_sanity_checks",
    "summarize",
    "threat_summary",
]
