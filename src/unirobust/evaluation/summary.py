"""The evaluation summary, assembled from the per-sample table one metric group at a time.

==============  ==========================================  ====================================
group           computed from                               module
==============  ==========================================  ====================================
clean           ``clean_correct`` (argmax of the logits)    :mod:`~unirobust.evaluation.clean`
threats, union  the per-threat robust columns               :mod:`~unirobust.evaluation.runner`
calibration     the stored clean (and validation) logits    :mod:`~unirobust.evaluation.calibration`
corruptions     the per-sample corrupted-copy columns       :mod:`~unirobust.evaluation.corruptions`
==============  ==========================================  ====================================

Nothing here runs a model: a saved table gives back the same summary. Keys: :mod:`.keys`.
"""

from __future__ import annotations

from typing import Any

from unirobust.evaluation.calibration import calibration_summary
from unirobust.evaluation.clean import clean_summary
from unirobust.evaluation.corruptions import corruption_summary
from unirobust.evaluation.keys import Group, Summary
from unirobust.evaluation.results import EvalResults
from unirobust.evaluation.runner import threat_summary

__all__ = ["summarize"]


def summarize(table: EvalResults) -> dict[str, Any]:
    """The JSON summary of ``table`` (what was measured, then one block per metric group)."""
    groups = [Group.CLEAN] + ([Group.THREATS, Group.UNION] if table.threats else [])
    out: dict[str, Any] = {
        Summary.SUITE: table.suite,
        Summary.MODEL_HASH: table.model_hash,
        Summary.DATASET: table.dataset,
        Summary.SPLIT: table.split,
        Summary.N_POINTS: table.n_points,
        Summary.POINTS: table.points,
        Summary.SEED: int(table.seed),
        Summary.BATCH_SIZE: int(table.batch_size),
        Summary.GROUPS: groups,
        **clean_summary(table),
        **threat_summary(table),
        Summary.WALL_TIME_S: float(table.wall_time_s),
    }
    calibration = calibration_summary(table) if table.calibration else None
    if calibration is not None:
        groups.append(Group.CALIBRATION)
        out[Summary.CALIBRATION] = calibration
    corruptions = corruption_summary(table.corrupted, table.corruption_info)
    if corruptions is not None:
        groups.append(Group.CORRUPTIONS)
        out[Summary.CORRUPTIONS] = corruptions
    return out
