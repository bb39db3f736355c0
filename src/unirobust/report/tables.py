"""Markdown tables: the results table (shared with the CLI) and the sections of a run report."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from unirobust.evaluation.keys import Calibration as Cal
from unirobust.evaluation.keys import Corruptions as Cor
from unirobust.evaluation.keys import Summary as S
from unirobust.report.fmt import (
    ABSENT,
    NA,
    _compact,
    _md_table,
    _num,
    _pct,
    _robust,
    _seconds,
    _severities,
    _show_union,
    _threats,
    _which_points,
)
from unirobust.report.runs import EvalRecord, RunRecord, _val_split_text
from unirobust.report.stages import _method_text, _stages_section


def format_results_table(summary_dicts: Iterable[Mapping[str, Any]]) -> str:
    """Markdown/plain-text table of evaluation summaries, one row per summary.

    Columns: checkpoint, suite, N, which points, clean, one column per threat label (eps included),
    union. Accuracies are percentages with two decimals. ``n/a`` marks a number the evaluation did
    not produce (e.g. per-threat accuracy of a union-only suite); ``—`` marks a threat that was not
    part of that summary's suite.
    """
    summaries = list(summary_dicts)
    if not summaries:
        return "(no evaluation summaries)"
    columns: dict[str, str] = {}
    for s in summaries:
        for spec, label in _threats(s):
            columns.setdefault(spec, label)
    any_union = any(_show_union(s) for s in summaries)
    header = ["checkpoint", "suite", "N", "points", "clean %"]
    header += [f"{label} %" for label in columns.values()]
    header += ["union %"] if any_union else []
    rows = []
    for s in summaries:
        own = {spec for spec, _ in _threats(s)}
        row = [
            s.get(S.CHECKPOINT) or ABSENT,
            s.get(S.SUITE) or ABSENT,
            s.get(S.N_POINTS) if s.get(S.N_POINTS) is not None else ABSENT,
            _which_points(s),
            _pct(s.get(S.CLEAN_ACC)),
        ]
        row += [_pct(_robust(s, spec)) if spec in own else ABSENT for spec in columns]
        if any_union:
            row.append(_pct(s.get(S.UNION_ACC)) if _show_union(s) else ABSENT)
        rows.append(row)
    return _md_table(header, rows, align="llrlr" + "r" * (len(header) - 5))


def _config_section(run: RunRecord) -> list[str]:
    cfg = run.config
    if not cfg:
        return ["## Configuration", "", "Configuration unknown (no readable config.yaml).", ""]
    data = cfg.get("data") or {}
    model = cfg.get("model") or {}
    train = cfg.get("train") or {}
    data_txt = f"`{data.get('name', '?')}`"
    extras = [
        f"{k} {data[k]}" for k in ("n_train", "n_test", "val_size", "batch_size") if k in data
    ]
    if extras:
        data_txt += " — " + ", ".join(extras)
    if isinstance(model, Mapping):
        rest = {k: v for k, v in model.items() if k != "name"}
        model_txt = f"`{model.get('name', '?')}`" + (f" ({_compact(rest)})" if rest else "")
    else:
        model_txt = f"`{model}`"
    stages = run.stages or []
    epochs = sum(int(st.get("epochs") or 0) for st in stages) if stages else train.get("epochs")
    rows: list[list[Any]] = [["Dataset", data_txt], ["Model", model_txt]]
    if stages:
        rows.append(["Training method", f"`{_method_text(stages)}`"])
    elif isinstance(train.get("method"), str):
        rows.append(["Training method", f"`{train['method']}`"])
    rows += [
        ["Epochs", f"{epochs if epochs is not None else '?'} configured, {len(run.epochs)} logged"],
        ["Seed", cfg.get("seed", "?")],
    ]
    times = [_num(e.get("time_s")) for e in run.epochs]
    times = [t for t in times if t is not None]
    ips = [_num(e.get("images_per_s")) for e in run.epochs]
    ips = [v for v in ips if v is not None]
    if times:
        speed = f", mean {statistics.fmean(ips):.0f} images/s" if ips else ""
        rows.append(["Training time", f"{_seconds(sum(times))} over {len(times)} epochs{speed}"])
    return [
        "## Configuration",
        "",
        _md_table(["Setting", "Value"], rows),
        "",
        *_stages_section(run.stages),
    ]


def _selection_section(run: RunRecord) -> list[str]:
    lines = ["## Model selection", ""]
    has_best_eval = bool(run.summaries("best"))
    ve = run.val_epochs
    best = run.best_epoch
    if ve and best is not None and isinstance(best.get("val"), Mapping):
        v = best["val"]
        sel = _num(v.get("select"))
        sel_txt = f"selection score {sel:.4f}; " if sel is not None else ""
        robust = _num(v.get("robust_acc"))
        robust_txt = (
            f", robust {_pct(robust)}% under {v.get('attack', 'an unrecorded attack')}"
            if robust is not None
            else ""
        )
        lines.append(
            f"The best epoch is **epoch {best['epoch']}** of {len(run.epochs)} (the last epoch "
            f"flagged `is_best`; {sel_txt}clean {_pct(v.get('clean_acc'))}%{robust_txt}). It was "
            f"chosen on the {_val_split_text(run)}, held out from the training data; the `best` "
            "checkpoint holds this epoch. The test set was not used for selection: it is used "
            "only for the final evaluation below."
        )
    elif ve:
        lines.append(
            "Validation metrics were logged, but no epoch was flagged `is_best`; there is no "
            "validation-selected epoch. The test set is used only for the final evaluation below."
        )
    else:
        lines.append(
            "No validation metrics were logged, so no epoch was selected on a validation split; "
            "report the `last` checkpoint. The test set is used only for the final evaluation."
        )
        if has_best_eval:
            lines.append(
                "\n**Warning:** a `best` checkpoint was evaluated, but these logs record no "
                "validation selection for it; check how it was chosen."
            )
    return [*lines, ""]


def _summary_section(rec: EvalRecord) -> list[str]:
    s = rec.summary or {}
    lines = [f"### Checkpoint `{rec.checkpoint}` (`{rec.rel}`)", ""]
    rows: list[list[Any]] = [["clean", ABSENT, _pct(s.get(S.CLEAN_ACC))]]
    for spec, label in _threats(s):
        rows.append([label, f"`{spec}`", _pct(_robust(s, spec))])
    if _show_union(s):
        rows.append(["union (all threats, per sample)", ABSENT, _pct(s.get(S.UNION_ACC))])
    lines += [_md_table(["Metric", "Threat spec", "Accuracy (%)"], rows, align="llr"), ""]
    facts = [
        f"- Suite: `{s.get(S.SUITE) or 'none (no threats evaluated)'}`"
        + (" (union only)" if s.get(S.UNION_ONLY) else ""),
        f"- Points: {s.get(S.N_POINTS, '?')} — {_which_points(s)} "
        f"(dataset `{s.get(S.DATASET, '?')}`, split `{s.get(S.SPLIT, '?')}`, "
        f"seed {s.get(S.SEED, '?')}, batch size {s.get(S.BATCH_SIZE, '?')})",
        f"- Wall time: {_seconds(s.get(S.WALL_TIME_S))}",
        f"- Model hash: `{s.get(S.MODEL_HASH, '?')}`",
    ]
    lines += [*facts, ""]
    cal = s.get(S.CALIBRATION)
    if isinstance(cal, Mapping):
        crow = [
            ["ECE (%)", _pct(cal.get(Cal.ECE))],
            ["MCE (%)", _pct(cal.get(Cal.MCE))],
            ["NLL", f"{cal[Cal.NLL]:.4f}" if _num(cal.get(Cal.NLL)) is not None else NA],
            ["Brier", f"{cal[Cal.BRIER]:.4f}" if _num(cal.get(Cal.BRIER)) is not None else NA],
            ["Accuracy (%)", _pct(cal.get(Cal.ACC))],
        ]
        if _num(cal.get(Cal.TEMPERATURE)) is not None:
            crow.append(["Temperature (fitted)", f"{cal[Cal.TEMPERATURE]:.4f}"])
        if "ece_scaled" in cal:
            crow.append(["ECE after temperature scaling (%)", _pct(cal.get(Cal.ECE_SCALED))])
        lines += [
            f"Calibration on {_which_points(s)}:",
            "",
            _md_table(["Calibration", "Value"], crow, align="lr"),
            "",
        ]
    cor = s.get(S.CORRUPTIONS)
    per = cor.get(Cor.PER_CORRUPTION) if isinstance(cor, Mapping) else None
    if isinstance(per, Mapping) and per:
        sevs = _severities(per)
        crows = []
        for name, d in per.items():
            d = {str(k): v for k, v in d.items()} if isinstance(d, Mapping) else {}
            crows.append([name, *(_pct(d.get(sv)) for sv in sevs)])
        lines += [
            f"Corruption accuracy (%) on {_which_points(s)}; mean over corruptions and severities "
            f"{_pct(cor.get(Cor.MEAN_ACC))}%:",
            "",
            _md_table(["Corruption", *(f"sev {sv}" for sv in sevs)], crows, "l" + "r" * len(sevs)),
            "",
        ]
    return lines
