"""The run report: ``RUN/report/report.md`` and its figures."""

from __future__ import annotations

from pathlib import Path

from unirobust.evaluation.keys import Summary as S
from unirobust.io import atomic_write_text
from unirobust.report.examples import plot_examples
from unirobust.report.figures import (
    _plot_corruptions,
    _plot_diagnostics,
    _plot_eval,
    _plot_reliability,
    _plot_training,
    _plot_validation,
)
from unirobust.report.fmt import UNION_NOTE
from unirobust.report.html import write_html
from unirobust.report.members import plot_members
from unirobust.report.ntk import plot_ntk
from unirobust.report.runs import RunRecord, load_run
from unirobust.report.tables import (
    _config_section,
    _selection_section,
    _summary_section,
    format_results_table,
)


def _render_report(run: RunRecord, figures: list[tuple[str, str]]) -> str:
    cfg = run.config
    lines = [f"# Run report: {run.name}", ""]
    if cfg.get("description"):
        lines += [str(cfg["description"]).strip(), ""]
    lines += [f"Run directory: `{run.run_dir}`", ""]
    lines += _config_section(run)
    lines += _selection_section(run)
    lines += ["## Final evaluation", ""]
    recs = run.summaries()
    if not recs:
        lines += [
            "**Not evaluated yet:** no evaluation summary was found in `eval/` or named by a "
            "`final_eval` event. Run `unirobust eval` on this run, then regenerate the report.",
            "",
        ]
    else:
        table = format_results_table(
            {**(r.summary or {}), S.CHECKPOINT: r.checkpoint} for r in recs
        )
        lines += [
            "Accuracies in %. " + UNION_NOTE + ". `n/a`: not measured by the suite; `—`: not part "
            "of that suite.",
            "",
            table,
            "",
        ]
        for rec in recs:
            lines += _summary_section(rec)
    lines += ["## Figures", ""]
    if figures:
        for i, (fname, caption) in enumerate(figures, start=1):
            lines += [f"![Figure {i}]({fname})", "", f"*Figure {i}. {caption}*", ""]
    else:
        lines += ["No figures (nothing logged or evaluated yet).", ""]
    if run.problems:
        lines += ["## Notes", "", *(f"- {p}" for p in run.problems), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dir: Path) -> Path:
    """Write ``RUN/report/report.md``, its PNG figures and ``report.html``; return the md path.

    Figures: ``training_curves.png``, ``validation.png`` (if validation was logged),
    ``diagnostics.png`` (if ``validation.diagnostics`` were logged), ``members.png`` (if
    ``validation.members`` were logged), ``ntk.png`` (if a stage computed its NTK), and per
    evaluation summary ``eval_<name>.png``, ``reliability_<name>.png`` (if calibration is present)
    and ``corruptions_<name>.png`` (if corruptions are present), and per threat with stored
    adversarial examples ``examples_<name>_<threat>.png``. Missing pieces are skipped and
    said so in the markdown. ``report.html`` (next to ``report.md``) holds the same content with
    the figures embedded as base64 PNG data URIs; it needs no other file and opens offline.
    """
    run = load_run(run_dir)
    out = run.run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, str] | None] = [
        _plot_training(run, out),
        _plot_validation(run, out),
        _plot_diagnostics(run, out),
        plot_members(run, out),
        plot_ntk(run, out),
    ]
    for rec in run.summaries():
        figures.append(_plot_eval(run, rec, out))
        figures.append(_plot_reliability(run, rec, out))
        figures.append(_plot_corruptions(run, rec, out))
        figures.extend(plot_examples(run, rec, out))
    path = out / "report.md"
    atomic_write_text(path, _render_report(run, [f for f in figures if f is not None]))
    write_html(path)
    return path
