"""``unirobust`` command line: train | eval | report | compare | recipes | demo.

User mistakes (:class:`unirobust.errors.UserError`) print one line on stderr and exit with code 2,
without a traceback; so does a failure of the file system (disk full, read-only, permission
denied, a file where a directory should be), which is the machine's state, not a bug. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from unirobust.errors import ConfigError, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train accurate and robust classifiers, and measure them honestly.",
)
console = Console(stderr=True)
out = Console(soft_wrap=True)

RECIPE_ROOTS = (Path.cwd() / "recipes", Path(__file__).resolve().parents[2] / "recipes")


def recipe_files() -> list[Path]:
    """Recipes shipped in the source tree (``recipes/**.yaml``), first root that exists.

    Files whose name starts with ``_`` are shared bases that recipes ``extends``; not listed."""
    for root in RECIPE_ROOTS:
        if root.is_dir():
            return sorted(p for p in root.rglob("*.yaml") if not p.name.startswith("_"))
    return []


def _recipe_keys(path: Path) -> set[str]:
    """The names a shipped recipe answers to: its stem and its path under ``recipes/`` as
    ``unirobust recipes`` lists it (with or without ``.yaml``)."""
    keys = {path.stem}
    for root in RECIPE_ROOTS:
        if path.is_relative_to(root):
            rel = path.relative_to(root).as_posix()
            keys |= {rel, rel.removesuffix(".yaml")}
    return keys


def resolve_recipe(text: str) -> Path:
    """A path, or a recipe name such as ``fmnist-generalist`` (or ``proxy/lpft/fmnist-lp``, as
    ``unirobust recipes`` lists it) found under ``recipes/``."""
    path = Path(text)
    if path.exists():
        return path
    matches = [p for p in recipe_files() if text in _recipe_keys(p)]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(p.stem for p in recipe_files())
    raise ConfigError(f"recipe '{text}' is neither a file nor a known recipe name ({names})")


_FILE_SYSTEM_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENOENT,
    errno.ENAMETOOLONG,
}


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except UserError as err:
        console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=err.exit_code) from None
    except OSError as err:
        if err.errno not in _FILE_SYSTEM_ERRNOS:
            raise
        where = f"'{err.filename}': " if err.filename else ""
        console.print(f"[red]error:[/red] {where}{err.strerror}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        console.print(
            "interrupted; resume with --resume RUN_DIR (nothing past the last checkpoint is lost)"
        )
        raise typer.Exit(code=130) from None


def _quiet_default() -> bool:
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def _finish(run_dir: Path, evaluate: bool) -> None:
    """After training on the main process: final evaluation, report, and where to find them."""
    from unirobust.pipeline import evaluate_run, load_run_config
    from unirobust.report import format_results_table, write_report

    config = load_run_config(run_dir)
    if evaluate and config.eval.enabled:
        # the recipe's own eval block, in this process alone (under torchrun, the other ranks of
        # the training have finished)
        summaries = evaluate_run(run_dir, progress=True, share_out=False)
        out.print(format_results_table(summaries), highlight=False)
    report = write_report(run_dir)
    out.print(f"run directory: {run_dir}\nreport: {report}", highlight=False)


@app.command()
def train(
    recipe: Annotated[
        str | None, typer.Argument(help="Recipe file or name (see 'recipes').")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override, e.g. train.epochs=3.")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default runs/NAME).")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Run the recipe's final evaluation and report.")
    ] = True,
    quiet: Annotated[
        bool | None, typer.Option(help="No progress bars (default when not a terminal).")
    ] = None,
) -> None:
    """Train a recipe into its own run directory; evaluate and report at the end."""

    def action() -> None:
        from unirobust.config import load_recipe
        from unirobust.pipeline import load_run_config
        from unirobust.pipeline import train as run_train

        if resume is not None:
            if recipe is not None or set_:
                raise ConfigError("--resume continues a run with its own config; drop RECIPE/--set")
            config = load_run_config(resume)
        elif recipe is None:
            raise ConfigError(
                "give a RECIPE (file or name from 'unirobust recipes') or --resume RUN"
            )
        else:
            config = load_recipe(resolve_recipe(recipe), set_ or [])
        show = not (quiet if quiet is not None else _quiet_default())
        run_dir = run_train(config, out=out_dir, resume=resume, progress=show)
        if int(os.environ.get("RANK", "0")) == 0:
            _finish(run_dir, evaluate)

    _run(action)


@app.command("eval")
def eval_(
    target: Annotated[Path, typer.Argument(help="Run directory or exported .safetensors model.")],
    suite: Annotated[str | None, typer.Option(help="aa-standard | aa-apgd | fast")] = None,
    threats: Annotated[str | None, typer.Option(help="e.g. linf:0.1,l2:1.5,l1:10")] = None,
    n: Annotated[
        int | None,
        typer.Option(
            "--n",
            "--n-points",
            help="First N test points (0: all). Under torchrun write --n-points (torchrun "
            "reads --n as one of its own options).",
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="best, last or best,last (run directories).")
    ] = None,
    union_only: Annotated[
        bool | None, typer.Option(help="Attack each norm only on points still robust.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Attack and corruption seed.")] = None,
    calibration: Annotated[
        bool | None, typer.Option(help="Calibration metrics and reliability diagram.")
    ] = None,
    corruptions: Annotated[
        str | None, typer.Option(help="Common corruptions: 'all', 'none' or a comma list.")
    ] = None,
    severities: Annotated[
        str | None, typer.Option(help="Corruption severities, e.g. 1,3,5.")
    ] = None,
    points: Annotated[
        str | None,
        typer.Option(
            help="Stored test positions: imagenet-val-10k or a file (text integers or .npy); "
            "'none': the first N."
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="cpu, cuda (under torchrun: each rank its own GPU) or auto.")
    ] = "cpu",
    nproc: Annotated[
        int | None,
        typer.Option(min=1, help="Processes on this machine: re-runs this command under torchrun."),
    ] = None,
) -> None:
    """Evaluate a model: clean, calibration, each threat and their union, corruptions.

    Settings come from the run's recipe (its eval: block); an option given here replaces only
    the setting it names. Without threats (none given, none in the recipe) the evaluation is clean
    accuracy, calibration and corruptions only. Per-sample results are written next to the model.
    With --nproc K (or under torchrun) the points are shared out over K processes, each with its
    own resumable state; rank 0 writes the merged table, equal to the single-process one.
    """
    if nproc is not None and nproc > 1:
        options = {
            "suite": suite,
            "threats": threats,
            "n-points": n,
            "batch-size": batch_size,
            "checkpoint": checkpoint,
            "union-only": union_only,
            "seed": seed,
            "calibration": calibration,
            "corruptions": corruptions,
            "severities": severities,
            "points": points,
            "device": device,
        }
        _run(lambda: _relaunch_under_torchrun(nproc, ["eval", str(target), *_flags(options)]))
        return

    def action() -> None:
        from unirobust.pipeline import evaluate_run
        from unirobust.report import format_results_table
        from unirobust.threats import parse_threats

        def items(text: str) -> list[str]:
            return [v.strip() for v in text.split(",") if v.strip()]

        given = {
            "suite": suite,
            "threats": parse_threats(threats) if threats else None,
            "batch_size": batch_size,
            "checkpoints": items(checkpoint) if checkpoint is not None else None,
            "union_only": union_only,
            "seed": seed,
            "calibration": calibration,
            "corruptions": None
            if corruptions is None
            else [c for c in items(corruptions) if c != "none"],
            "corruption_severities": None
            if severities is None
            else [int(v) if v.isdigit() else v for v in items(severities)],
        }
        overrides = {k: v for k, v in given.items() if v is not None}
        if n is not None:
            overrides["n"] = n or None  # 0: every test point
        if points is not None:
            overrides["points"] = None if points == "none" else points
        summaries = evaluate_run(target, overrides=overrides, progress=True, device=device)
        if summaries:  # under torchrun only rank 0 has them
            out.print(format_results_table(summaries), highlight=False)

    _run(action)


def _flags(options: dict[str, Any]) -> list[str]:
    """Command-line flags for the options that were given (``None``: not given)."""
    args: list[str] = []
    for name, value in options.items():
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None:
            args += [f"--{name}", str(value)]
    return args


def _relaunch_under_torchrun(nproc: int, args: list[str]) -> None:
    """Run ``unirobust ARGS`` in ``nproc`` processes on this machine (torchrun ``--standalone``,
    one rendezvous per call); its exit code becomes ours."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "unirobust", *args]
    console.print(f"running {nproc} processes: torchrun ... -m unirobust {' '.join(args)}")
    code = subprocess.call(cmd)
    if code:
        raise typer.Exit(code=code)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """(Re)write a run's report: report.md, report.html (figures embedded) and the figures."""

    def action() -> None:
        from unirobust.engine.rundir import RunDir
        from unirobust.io import check_writable_dir
        from unirobust.report import write_report

        RunDir.open_existing(run_dir)
        check_writable_dir(run_dir / "report")
        path = write_report(run_dir)
        out.print(f"report: {path}\nhtml: {path.with_suffix('.html')}", highlight=False)

    _run(action)


@app.command()
def compare(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories (seeds of the same recipe are pooled).")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where comparison.md/.html/.json and figures go.")
    ] = Path("runs/comparison"),
    checkpoint: Annotated[str, typer.Option()] = "last",
    title: Annotated[str, typer.Option()] = "",
) -> None:
    """Compare runs: mean ± std over seeds, trade-off plots, multi-norm bars; md and HTML."""

    def action() -> None:
        from unirobust.report import compare_runs

        path = compare_runs(run_dirs, out_dir, checkpoint=checkpoint, title=title)
        out.print(Path(path).read_text(), highlight=False)
        out.print(f"comparison: {path}\nhtml: {path.with_suffix('.html')}", highlight=False)

    _run(action)


def _import_shape(
    dataset: str, num_classes: int | None, image_size: int | None
) -> tuple[int, tuple[int, int, int]]:
    """(classes, input shape): the dataset's fixed shape, or the two options for a dataset
    without one (imagefolder: RGB images resized to ``image_size``)."""
    from unirobust.data import dataset_shape
    from unirobust.data.registry import DATASETS

    if num_classes is None and image_size is None:
        return dataset_shape(dataset)
    fixed = getattr(DATASETS.get(dataset).spec, "shape", None)  # an unknown name fails here
    if fixed is not None:
        raise ConfigError(
            f"dataset '{dataset}' has a fixed shape {fixed}; --num-classes and --image-size "
            "are only for a dataset without one (imagefolder)"
        )
    if num_classes is None or image_size is None or num_classes < 1 or image_size < 8:
        raise ConfigError(
            f"dataset '{dataset}' needs both --num-classes (>= 1) and --image-size (>= 8), "
            f"e.g. 1000 and 224 for ImageNet; got {num_classes} and {image_size}"
        )
    return num_classes, (3, image_size, image_size)


@app.command("import-weights")
def import_weights_(
    source: Annotated[
        Path, typer.Argument(help="A PyTorch state dict (.pt/.pth), e.g. official weights.")
    ],
    model: Annotated[str, typer.Option(help="Model name from the registry, e.g. resnet18.")],
    dataset: Annotated[str, typer.Option(help="Dataset the model was trained on, e.g. cifar10.")],
    target: Annotated[Path, typer.Option("--out", help="The .safetensors file to write.")],
    data_dir: Annotated[str | None, typer.Option(help="Where that dataset lives.")] = None,
    prefix: Annotated[
        str | None,
        typer.Option(help="Take the tensors under this prefix, e.g. 'model.' (default: search)."),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(help="Classes, for a dataset without a fixed shape (imagefolder)."),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help="RGB image side, for a dataset without a fixed shape (imagefolder)."),
    ] = None,
) -> None:
    """Convert foreign weights (module. prefixes stripped, wrappers such as the robustness
    library's model./attacker. reduced to the model) so eval can attack them."""

    def action() -> None:
        from unirobust.engine.checkpoint import import_weights

        classes, shape = _import_shape(dataset, num_classes, image_size)
        path = import_weights(
            source,
            target,
            model=model,
            num_classes=classes,
            input_shape=shape,
            dataset=dataset,
            data_dir=data_dir,
            prefix=prefix,
            data_options={"image_size": image_size} if image_size is not None else None,
        )
        out.print(f"wrote {path}; evaluate it with: unirobust eval {path} --threats ...")

    _run(action)


@app.command()
def recipes(
    registered: Annotated[
        bool,
        typer.Option(
            "--registered/--no-registered",
            help="List the registered objectives, merge rules, models and datasets instead.",
        ),
    ] = False,
) -> None:
    """List the shipped recipes with their one-line descriptions."""
    if registered:
        from unirobust.data.registry import DATASETS
        from unirobust.experts.merge import MERGE_RULES
        from unirobust.models.registry import MODELS
        from unirobust.objectives.base import OBJECTIVES

        for registry in (OBJECTIVES, MERGE_RULES, MODELS, DATASETS):
            out.print(f"{registry.kind}s:", highlight=False)
            for entry in registry.entries():
                keys = ", ".join(k for k in entry.spec.model_fields if k != "name")
                line = f"  {entry.name:16s} {entry.summary} [{keys}]"
                out.print(line, highlight=False, markup=False)
        return
    files = recipe_files()
    if not files:
        out.print("no recipes found (run from the repository root)")
        return
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            description = data.get("description", "") if isinstance(data, dict) else ""
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            description = "(unreadable YAML)"
        root = next((r for r in RECIPE_ROOTS if r in path.parents), path.parent)
        rel = path.relative_to(root)  # its stem is the name to train
        out.print(f"{rel!s:50s} {description}", highlight=False)


#: The demo's recipes (recipes/proxy/fmnist-demo-*.yaml): one budget and one evaluation, shared.
DEMO_RECIPES = ("fmnist-demo-natural", "fmnist-demo-pgd-at", "fmnist-demo-generalist")


def _demo_plan(configs: list[Any], sep: str = "\n") -> str:
    """What the demo compares, on which budget and on which test points (from the recipes)."""
    first = configs[0]
    d, ev = first.data, first.eval
    threats = ", ".join(str(t).replace(":", " eps ") for t in ev.threats) or "no threat"
    points = f"first {ev.n} test points" if ev.n else "full test set"
    methods = ", ".join(c.name for c in configs)
    return (
        f"{methods} compared on one budget — {d.name}, {first.model.name}, "
        f"{d.n_train or 'all'} training images, {first.train.epochs} epochs, batch {d.batch_size}, "
        f"seed {first.seed}.{sep}Each is evaluated with AutoAttack (suite {ev.suite}) under "
        f"{threats} on the same {points}, checkpoint {ev.checkpoints[0]}."
    )


def _first_table(markdown: str) -> str:
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


@app.command()
def demo(
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Demo directory (default runs/demo-TIME).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override for all three recipes, e.g. train.epochs=1."),
    ] = None,
    quiet: Annotated[bool | None, typer.Option(help="No progress bars.")] = None,
) -> None:
    """The main job: natural training, PGD-AT and Generalist on one small Fashion-MNIST budget,
    each evaluated with AutoAttack on the same test points, then one comparison report."""

    def action() -> None:
        from unirobust.config import load_recipe
        from unirobust.engine.rundir import RunDir
        from unirobust.io import check_writable_dir
        from unirobust.pipeline import train as run_train
        from unirobust.report import compare_runs

        target = out_dir or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        RunDir.refuse_existing(target)  # before any work, so a refusal costs nothing
        check_writable_dir(target)
        configs = [load_recipe(resolve_recipe(name), set_ or []) for name in DEMO_RECIPES]
        show = not (quiet if quiet is not None else _quiet_default())
        then = "Then one comparison report (table + clean-vs-robust plot) and a report per run."
        out.print(f"unirobust demo: {_demo_plan(configs)}\n{then}", highlight=False)
        start = time.perf_counter()
        run_dirs = []
        for i, config in enumerate(configs, start=1):
            out.print(
                f"\n[{i}/{len(configs)}] {config.name}: {config.description}", highlight=False
            )
            run_dirs.append(run_train(config, out=target / config.name, progress=show))
            _finish(run_dirs[-1], evaluate=True)
        checkpoint = configs[0].eval.checkpoints[0]
        title = "Demo: natural training vs PGD-AT vs Generalist"
        reports = [f"`../{d.name}/report/report.html`" for d in run_dirs]
        intro = _demo_plan(configs, " ") + (
            "\n\nEach run's own report, with training curves and adversarial examples: "
            + ", ".join(reports)
            + "."
        )
        path = compare_runs(
            run_dirs, target / "comparison", checkpoint=checkpoint, title=title, intro=intro
        )
        out.print(f"\n{title}\n{_first_table(path.read_text())}", highlight=False)
        listing = "\n".join(f"  {d / 'report' / 'report.html'}" for d in run_dirs)
        out.print(
            f"comparison: {path.with_suffix('.html')}\n(markdown: {path})\n"
            f"run reports (with adversarial examples):\n{listing}\n"
            f"demo finished in {time.perf_counter() - start:.0f} s",
            highlight=False,
        )

    _run(action)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
