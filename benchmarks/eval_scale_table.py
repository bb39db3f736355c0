"""Print the docs/performance.md tables of ``bench_eval_scale.py`` from its JSON (no numbers
are typed by hand): ``.venv/bin/python benchmarks/eval_scale_table.py [RESULT.json]`` (default
``benchmarks/results/eval_scale.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parent / "results" / "eval_scale.json"


def tables(result: dict) -> str:
    wall = result["wall"]
    lines = [
        f"Wall time: first {wall['n']} test points, suite `{wall['suite']}`, threats "
        f"{result['threats']}, full mode, batch {wall['batch_size']}; load average "
        f"{result['load_average_at_start']:.1f} at start, {result['load_average_at_end']:.1f} "
        "at end.",
        "",
        "| layout | wall time (s) | attack time per rank (s) | peak RSS per rank (MB) |",
        "|---|---:|---:|---:|",
    ]
    for label, run in wall.items():
        if not isinstance(run, dict) or "ranks" not in run:
            continue
        ranks = sorted(run["ranks"], key=lambda r: r["rank"])
        attack = ", ".join(
            f"{r['attack_wall_time_s']:.1f}" for r in ranks if "attack_wall_time_s" in r
        )
        rss = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in ranks)
        lines.append(f"| {label} | {run['wall_s']:.1f} | {attack} | {rss} |")
    lines += [
        "",
        f"Ratio 2 processes / 1 process (1 thread): **{wall['ratio_2x1_over_1x1']:.2f}x**; "
        f"2 processes / 1 process with 2 threads: **{wall['ratio_2x1_over_1x2']:.2f}x**. "
        f"Merged table equal to the single-process one: {wall['tables_equal_1x1_vs_2x1']}.",
        "",
        f"Peak memory: suite `{result['memory']['suite']}`, batch "
        f"{result['memory']['batch_size']}, {result['memory']['threads']} thread, one process.",
        "",
        "| N points | test split | RSS before data (MB) | peak RSS (MB) | rise (MB) | wall (s) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for p in result["memory"]["points"]:
        rise = p["peak_rss_mb"] - p["rss_before_data_mb"]
        kind = "streamed" if p["streamed"] else "in memory"
        lines.append(
            f"| {p['n']:,} | {kind} | {p['rss_before_data_mb']:.0f} | {p['peak_rss_mb']:.0f} | "
            f"{rise:.0f} | {p['wall_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    print(tables(json.loads(path.read_text())))
