"""Markdown reports and matplotlib figures for run directories.

Everything here reads back what other modules wrote into a run directory (``config.yaml``,
``metrics.jsonl``, ``stages.json``, ``eval/*.json``); nothing trains or attacks. Summary keys are
read through :mod:`unirobust.evaluation.keys`, the names the evaluation writes them with.

Modules: :mod:`.runs` (reading a run), :mod:`.tables` (markdown tables and sections),
:mod:`.figures` (PNG figures), :mod:`.examples` (adversarial-example figures from the stored
per-sample table), :mod:`.stages` (stages and experts from ``stages.json``),
:mod:`.compare` (multi-seed comparison), :mod:`.multinorm` (the comparison's clean / per-norm /
union section), :mod:`.document` (the report itself), :mod:`.html` (standalone HTML copies) and
:mod:`.fmt` (shared formatting).

Public API:

- :func:`write_report` -- ``RUN/report/report.md`` plus PNG figures for one run, and
  ``report.html`` next to it (same content, figures embedded; opens offline).
- :func:`compare_runs` -- mean ± std over seeds per recipe, ``comparison.md``/``.html``/``.json``,
  a clean-vs-robust trade-off plot and, for multi-threat evaluations, a multi-norm table with
  grouped bars and a clean-vs-union plot.
- :func:`format_results_table` -- a plain markdown table of evaluation summaries (for the CLI).
- :func:`load_run` -- the parsed contents of a run directory (:class:`RunRecord`).
"""

from unirobust.report.compare import compare_runs
from unirobust.report.document import write_report
from unirobust.report.runs import EvalRecord, RunRecord, load_run
from unirobust.report.tables import format_results_table

__all__ = [
    "EvalRecord",
    "RunRecord",
    "compare_runs",
    "format_results_table",
    "load_run",
    "write_report",
]
