"""Multi-norm comparison (clean / linf / l2 / l1 / union per method) and the standalone HTML.

Runs are synthetic run directories whose summaries have the format ``evaluate_run`` writes (built
as in test_report.py); means and standard deviations are recomputed here, independently.
"""

from __future__ import annotations

import base64
import re
import statistics
from pathlib import Path
from typing import Any

from test_report import _assert_png, _summary, make_run
from typer.testing import CliRunner

from unirobust.cli import app
from unirobust.report import compare_runs, write_report
from unirobust.report.html import markdown_to_html

THREATS = ["linf:8/255", "l2:0.5", "l1:12"]
LABELS = ["linf 8/255", "l2 0.5", "l1 12"]
URL = re.compile(r"https?://|src=\"(?!data:)|href=", re.IGNORECASE)
IMAGES = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")

# method -> per seed (clean, linf, l2, l1, union); None per-norm numbers: union-only evaluation
METHODS: dict[str, list[tuple[float, float | None, float | None, float | None, float]]] = {
    "e-at": [(0.81, 0.42, 0.55, 0.40, 0.33), (0.83, 0.44, 0.57, 0.37, 0.31)],
    "ramp": [
        (0.78, 0.46, 0.58, 0.45, 0.39),
        (0.79, 0.47, 0.60, 0.43, 0.38),
        (0.76, 0.45, 0.59, 0.46, 0.40),
    ],
    "msd-union-only": [(0.74, None, None, None, 0.36), (0.75, None, None, None, 0.37)],
}


def _multinorm_summary(values: tuple[Any, ...]) -> dict[str, Any]:
    clean, linf, l2, l1, union = values
    s = _summary("last", clean, 0.0, 0.0, union, calib=False)
    s.update(
        suite="aa-apgd",
        threats=list(THREATS),
        threat_labels=list(LABELS),
        union_only=linf is None,
        robust_acc=dict(zip(THREATS, (linf, l2, l1), strict=True)),
    )
    return s


def _runs(root: Path) -> list[Path]:
    runs = []
    for method, seeds in METHODS.items():
        for seed, values in enumerate(seeds):
            evals = {"last": _multinorm_summary(values)}
            runs.append(make_run(root, f"{method}-{seed}", name=method, seed=seed, evals=evals))
    return runs


def _expected(values: list[float | None]) -> str:
    """mean ± sample std in %, as the comparison shows it (computed independently)."""
    if any(v is None for v in values):
        return "n/a"
    mean = statistics.mean(values)
    std = statistics.stdev(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _section_rows(md: str, heading: str) -> tuple[list[str], list[list[str]]]:
    section = md.split(f"## {heading}\n", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def _assert_standalone_html(html_path: Path, md_path: Path) -> str:
    """The HTML embeds every image of the markdown as a PNG data URI and points nowhere else."""
    html = html_path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert URL.search(html) is None
    names = IMAGES.findall(md_path.read_text(encoding="utf-8"))
    assert names
    assert html.count('src="data:image/png;base64,') == len(names)
    for name in names:
        encoded = base64.b64encode((md_path.parent / name).read_bytes()).decode("ascii")
        assert f"data:image/png;base64,{encoded}" in html, name
    return html


def test_compare_multinorm_table_figures_and_html(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    md_path = compare_runs(_runs(tmp_path), out, checkpoint="last", title="Multi-norm proxy")
    for fig in ("tradeoff", "multinorm_bars", "clean_vs_union"):
        _assert_png(out / f"{fig}.png")
    md = md_path.read_text()
    assert "](multinorm_bars.png)" in md and "](clean_vs_union.png)" in md

    header, rows = _section_rows(md, "Multi-norm robustness")
    assert header == [
        "method",
        "seeds",
        "clean %",
        "linf 8/255 %",
        "l2 0.5 %",
        "l1 12 %",
        "union %",
        "evaluation",
    ]
    by_method = {row[0]: row for row in rows}
    assert set(by_method) == set(METHODS)
    for method, seeds in METHODS.items():
        row = by_method[method]
        assert row[1] == f"{len(seeds)} ({', '.join(str(i) for i in range(len(seeds)))})"
        columns = list(zip(*seeds, strict=True))  # clean, linf, l2, l1, union over seeds
        assert row[2:7] == [_expected(list(col)) for col in columns], method
    assert by_method["msd-union-only"][7] == "union-only"
    assert by_method["ramp"][7] == "per-norm + union"

    # captions and text say protocol, eps of each norm, points and checkpoint
    section = md.split("## Multi-norm robustness\n", 1)[1]
    for needle in ("aa-apgd", "APGD-CE", "linf 8/255, l2 0.5, l1 12", "first 1000 test points"):
        assert needle in section, needle
    assert "Checkpoint `last`" in section and "no per-norm accuracy" in section

    html = _assert_standalone_html(out / "comparison.html", md_path)
    assert html.count('src="data:image/png;base64,') == 3
    assert "<h2>Multi-norm robustness</h2>" in html
    assert f'<td class="r">{by_method["ramp"][6]}</td>' in html
    assert "<figcaption>" in html and "<code>last</code>" in html


def test_no_multinorm_section_for_single_threat_runs(tmp_path: Path) -> None:
    s = _summary("last", 0.8, 0.4, 0.5, 0.3, calib=False)
    s.update(threats=["linf:0.1"], threat_labels=["linf 0.1"], robust_acc={"linf:0.1": 0.4})
    s["union_acc"] = None
    run = make_run(tmp_path, "single", evals={"last": s})
    md_path = compare_runs([run], tmp_path / "cmp")
    assert "Multi-norm" not in md_path.read_text()
    assert not (tmp_path / "cmp" / "multinorm_bars.png").exists()
    _assert_standalone_html(tmp_path / "cmp" / "comparison.html", md_path)


def test_report_html_embeds_every_figure(tmp_path: Path) -> None:
    best = _summary(None, 0.8325, 0.4110, 0.5050, 0.3875)
    run = make_run(tmp_path, evals={"best": best})
    md_path = write_report(run)
    html = _assert_standalone_html(run / "report" / "report.html", md_path)
    assert "<h1>Run report: generalist-fmnist</h1>" in html
    assert "<title>Run report: generalist-fmnist</title>" in html
    for number in ("83.25", "41.10", "50.50", "38.75"):
        assert f'<td class="r">{number}</td>' in html, number
    assert "<li>Suite: <code>pgd-quick</code></li>" in html


def test_markdown_subset() -> None:
    md = "\n".join(
        [
            "# Title & <more>",
            "",
            "Some **bold** and *italic* text with `a*b<c` code,",
            "continued on a second line; 2 * 3 stays.",
            "",
            "| name | value |",
            "| ---- | ----: |",
            "| a\\|b | 1.00 |",
            "",
            "- first `x`",
            "- second",
            "",
            "```",
            "<raw> *text*",
            "```",
            "",
            "![Missing](nope.png)",
            "",
            "![Remote](https://example.org/x.png)",
        ]
    )
    html = markdown_to_html(md, Path("/nonexistent"))
    assert "<title>Title &amp; &lt;more&gt;</title>" in html
    assert "<h1>Title &amp; &lt;more&gt;</h1>" in html
    assert (
        "<p>Some <strong>bold</strong> and <em>italic</em> text with <code>a*b&lt;c</code> code, "
        "continued on a second line; 2 * 3 stays.</p>"
    ) in html
    assert '<tr><th>name</th><th class="r">value</th></tr>' in html
    assert '<tr><td>a|b</td><td class="r">1.00</td></tr>' in html
    assert "<ul>\n<li>first <code>x</code></li>\n<li>second</li>\n</ul>" in html
    assert "<pre><code>&lt;raw&gt; *text*</code></pre>" in html
    assert html.count('class="missing"') == 2
    assert "<img" not in html and 'src="' not in html


def test_cli_compare_and_report_name_the_html(tmp_path: Path) -> None:
    runs = _runs(tmp_path)[:2]
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"html:{out / 'comparison.html'}" in "".join(result.output.split())
    assert (out / "comparison.html").is_file()
    result = CliRunner().invoke(app, ["report", str(runs[0])])
    assert result.exit_code == 0, result.output
    assert (runs[0] / "report" / "report.html").is_file()
