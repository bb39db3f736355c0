"""Issue 9: bad checkpoints at every entry point, malformed recipes (property-based), bad paths on
the command line. Each gives one line and exit code 2 (or the library's error), runs no code and
writes nothing."""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import tiny_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

from unirobust.cli import app
from unirobust.config import load_recipe, validate_recipe
from unirobust.engine.checkpoint import (
    export_model,
    import_weights,
    initial_weights,
    load_model,
    load_train_state,
    save_train_state,
)
from unirobust.errors import CheckpointError, ConfigError
from unirobust.models import build_model
from unirobust.pipeline import train

runner = CliRunner()
SHAPE = (1, 8, 8)
MARKER = Path("/tmp") / f"unirobust-payload-ran-{os.getpid()}"
"""The payload's proof of execution: it would create this directory."""


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and text.count("error:") == 1, text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------ checkpoints


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (str(MARKER),))


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, pickle_module=pickle)
    return buffer.getvalue()


def _bad_contents(good_model: bytes, good_state: bytes) -> dict[str, bytes]:
    """The seven kinds of bad file the issue lists (payload twice: raw pickle and torch zip)."""
    rng = random.Random(9)
    other_program = io.BytesIO()
    with zipfile.ZipFile(other_program, "w") as archive:  # a zip, like torch's files
        archive.writestr("word/document.xml", "<w:document/>")
    return {
        "truncated-model": good_model[: len(good_model) // 2],
        "truncated-state": good_state[: len(good_state) // 2],
        "random-bytes": bytes(rng.getrandbits(8) for _ in range(4096)),
        "empty": b"",
        "other-program-png": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "other-program-zip": other_program.getvalue(),
        "pickle-payload": pickle.dumps({"weight": _Payload()}),
        "torch-payload": _torch_bytes(
            {"format": "unirobust-train-state", "version": 1, "x": _Payload()}
        ),
    }


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    meta = {"model": {"name": "mlp", "options": {}}, "num_classes": 10, "input_shape": list(SHAPE)}
    good = root / "good.safetensors"
    export_model(good, build_model("mlp", num_classes=10, input_shape=SHAPE), meta)
    state_path = root / "good-state.pt"
    save_train_state(state_path, {"epoch": 1, "w": torch.zeros(3)})
    files = {}
    for name, data in _bad_contents(good.read_bytes(), state_path.read_bytes()).items():
        for suffix in (".safetensors", ".pt"):
            files[name + suffix] = root / (name + suffix)
            files[name + suffix].write_bytes(data)
    other = build_model("mlp", num_classes=10, input_shape=SHAPE, hidden_sizes=[7])
    export_model(root / "other-shape.safetensors", other, meta)  # claims the default mlp
    torch.save(other.state_dict(), root / "other-shape.pt")
    files["other-shape.safetensors"] = root / "other-shape.safetensors"
    files["other-shape.pt"] = root / "other-shape.pt"
    ours = {"format": "unirobust-model", "version": "1", "num_classes": "10", "input_shape": "[1]"}
    for suffix, tag in ((".safetensors", ours), ("-plain.safetensors", None)):
        path = root / f"foreign-keys{suffix}"
        save_file({"encoder.weight": torch.zeros(2, 2)}, str(path), metadata=tag)
        files[path.name] = path
    return files


def test_every_loader_refuses_every_bad_file(bad_files: dict[str, Path]) -> None:
    mlp = build_model("mlp", num_classes=10, input_shape=SHAPE)
    for name, path in bad_files.items():
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value), (name, err.value)
        with pytest.raises(CheckpointError):
            load_train_state(path)
        with pytest.raises(CheckpointError):  # init_from: read, then every tensor checked
            from unirobust.engine.checkpoint import load_weights_into

            tensors, source = initial_weights(str(path))
            load_weights_into(mlp, tensors, source)
    assert not MARKER.exists()


def test_cli_eval_and_import_refuse_bad_files(bad_files: dict[str, Path], tmp_path: Path) -> None:
    names = sorted(bad_files)
    for name in names:
        path = bad_files[name]
        before = _files(path.parent)
        _one_line_error(runner.invoke(app, ["eval", str(path), "--threats", "linf:0.1"]))
        out = tmp_path / f"{name}.safetensors"
        args = ["import-weights", str(path), "--model", "mlp", "--dataset", "digits"]
        _one_line_error(runner.invoke(app, [*args, "--out", str(out)]))
        assert not out.exists() and _files(path.parent) == before, name
    assert not MARKER.exists()


@pytest.mark.slow
def test_resume_and_init_from_refuse_bad_files(bad_files: dict[str, Path], tmp_path: Path) -> None:
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 1
    run = train(validate_recipe(recipe), out=tmp_path / "run", progress=False)
    state = run / "checkpoints" / "train_state.pt"
    good_state = state.read_bytes()
    # a train state of another model shape
    other = load_train_state(state)
    other["experts"]["natural"]["model"] = {
        k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.ndim else v
        for k, v in other["experts"]["natural"]["model"].items()
    }
    save_train_state(tmp_path / "other-state.pt", {k: v for k, v in other.items() if k != "format"})
    candidates = {n: p for n, p in bad_files.items() if n.endswith(".pt")}
    candidates["other-shape-state.pt"] = tmp_path / "other-state.pt"
    for name, path in candidates.items():
        shutil.copyfile(path, state)
        before = _files(run)
        _one_line_error(runner.invoke(app, ["train", "--resume", str(run)]), str(state))
        assert _files(run) == before, name
    state.write_bytes(good_state)
    for name, path in bad_files.items():
        recipe["init_from"] = str(path)
        with pytest.raises(CheckpointError):
            train(validate_recipe(recipe), out=tmp_path / f"init-{name}", progress=False)
        assert not (tmp_path / f"init-{name}").exists()
    assert not MARKER.exists()


def test_import_weights_refuses_foreign_keys_and_shapes(
    bad_files: dict[str, Path], tmp_path: Path
) -> None:
    for name in ("other-shape.pt", "foreign-keys.safetensors"):
        with pytest.raises(CheckpointError, match="does not fit model 'mlp'"):
            import_weights(
                bad_files[name],
                tmp_path / "x.safetensors",
                model="mlp",
                num_classes=10,
                input_shape=SHAPE,
                dataset="digits",
            )
    assert not (tmp_path / "x.safetensors").exists()


# ------------------------------------------------------------------ malformed recipes

VALID = tiny_recipe(validation={"threats": ["linf:0.1"], "steps": 2})
SECTIONS = ["data", "model", "train", "validation", "eval"]
# leaves whose value must be of one kind: (path, values of the wrong kind)
NUMERIC = [
    ("seed",),
    ("data", "batch_size"),
    ("data", "n_train"),
    ("train", "epochs"),
    ("validation", "steps"),
    ("checkpoint_every",),
]
NAMED = [
    ("data", "name"),
    ("model", "name"),
    ("train", "experts", 0, "objective", "name"),
    ("train", "experts", 0, "optimizer", "name"),
    ("train", "experts", 0, "lr_schedule", "kind"),
    ("train", "merge", "name"),
    ("train", "check_finite"),
    ("eval", "suite"),
]
THREAT_SLOTS = [("validation", "threats", 0), ("eval", "threats", 0)]
EMPTY_LISTS = [("train", "experts"), ("eval", "corruption_severities")]
TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!binary aGVsbG8=",
]


def _set(data: dict[str, Any], path: tuple, value: Any) -> None:
    node: Any = data
    for key in path[:-1]:
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]
    if isinstance(node, list):
        node[path[-1]] = value
    else:
        node[path[-1]] = value


def _as_text(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


@st.composite
def malformed(draw) -> tuple[str, bytes]:
    """(kind, file content) of a recipe with exactly one thing wrong."""
    data = copy.deepcopy(VALID)
    data["eval"] = {"enabled": False}
    kind = draw(
        st.sampled_from(
            [
                "unknown-key",
                "wrong-type",
                "bad-radius",
                "empty-list",
                "unknown-name",
                "contradiction",
                "not-utf8",
                "not-text",
                "yaml-tag",
                "nesting",
                "duplicate-key",
            ]
        )
    )
    word = draw(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True))
    if kind == "unknown-key":
        section = draw(st.sampled_from([None, *SECTIONS]))
        target = data if section is None else data.setdefault(section, {})
        key = f"{word}_x"
        target[key] = draw(st.one_of(st.integers(), st.text(max_size=5), st.none()))
    elif kind == "wrong-type":
        path = draw(st.sampled_from(NUMERIC + NAMED))
        bad = draw(
            st.one_of(
                st.lists(st.integers(), min_size=1, max_size=3),
                st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), min_size=1),
                st.just("many") if path in NUMERIC else st.just(17.5),
            )
        )
        _set(data, path, bad)
    elif kind == "bad-radius":
        norm = draw(st.sampled_from(["linf", "l2", "l1"]))
        radius = draw(
            st.one_of(
                st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False),
                st.sampled_from(["nan", ".nan", "inf", "-inf", "NaN", "", "x", "1e400"]),
            )
        )
        slot = draw(st.sampled_from(THREAT_SLOTS))
        if slot[0] == "eval":
            data["eval"]["threats"] = ["linf:0.1"]
        _set(data, slot, f"{norm}:{radius}")
    elif kind == "empty-list":
        path = draw(st.sampled_from(EMPTY_LISTS))
        _set(data, path, [])
    elif kind == "unknown-name":
        path = draw(st.sampled_from([*NAMED, "norm"]))
        if path == "norm":
            _set(data, ("validation", "threats", 0), f"{word}9:0.1")
        else:
            _set(data, path, f"no_such_{word}")
    elif kind == "contradiction":
        which = draw(st.sampled_from(["stages+epochs", "stage-names", "generalist+experts"]))
        if which == "stages+epochs":
            data["train"]["stages"] = [{"name": "a", "epochs": 1, "experts": VALID_EXPERTS}]
        elif which == "stage-names":
            stage = {"name": "same", "epochs": 1, "experts": VALID_EXPERTS}
            data["train"] = {"stages": [stage, dict(stage)]}
        else:
            data["train"]["generalist"] = {"preset": "nat_linf"}
    elif kind == "not-utf8":
        prefix = _as_text(data).encode()
        junk = draw(st.binary(min_size=1, max_size=40))
        return kind, prefix[: draw(st.integers(0, len(prefix)))] + b"\xff\xfe" + junk
    elif kind == "not-text":
        return kind, b"\x00" + draw(st.binary(min_size=0, max_size=200))
    elif kind == "yaml-tag":
        tag = draw(st.sampled_from(TAGS)).format(marker=MARKER)
        key = draw(st.sampled_from(["name", "seed", "description", "extra"]))
        text = _as_text({k: v for k, v in data.items() if k != key})
        return kind, f"{key}: {tag}\n{text}".encode()
    elif kind == "nesting":
        depth = draw(st.integers(65, 3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        return kind, (_as_text(data) + f"deep: {opener * depth}1{closer * depth}\n").encode()
    elif kind == "duplicate-key":
        text = _as_text(data)
        return kind, f"{text}seed: {draw(st.integers(0, 9))}\n".encode()
    return kind, _as_text(data).encode()


VALID_EXPERTS = VALID["train"]["experts"]


def test_the_valid_base_recipe_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(_as_text({**VALID, "eval": {"enabled": False}}))
    load_recipe(path)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=malformed())
def test_malformed_recipes_are_refused(tmp_path: Path, case: tuple[str, bytes]) -> None:
    kind, content = case
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message and "\n" not in message and len(message) < 2000, (kind, message)
    assert not MARKER.exists()


CLI_SAMPLE = {
    "unknown key": (_as_text({**VALID, "bogus": 1}).encode(), "bogus"),
    "NaN radius": (_as_text({**VALID, "validation": {"threats": ["l2:nan"]}}).encode(), "l2:nan"),
    "not UTF-8": (b"name: \xff\xfe\n", "not UTF-8"),
    "YAML tag": (f"name: !!python/object/apply:os.mkdir ['{MARKER}']\n".encode(), "not valid"),
    "nesting": (b"name: t\ntrain: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper"),
    "unknown model": (_as_text({**VALID, "model": {"name": "resnet9000"}}).encode(), "resnet9000"),
}


@pytest.mark.parametrize("case", sorted(CLI_SAMPLE))
def test_cli_refuses_malformed_recipes_without_writing(tmp_path: Path, case: str) -> None:
    content, needle = CLI_SAMPLE[case]
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the default run directory would be runs/NAME under here
    try:
        before = _files(tmp_path)
        result = runner.invoke(app, ["train", str(path)])
        _one_line_error(result, needle)
        assert _files(tmp_path) == before
    finally:
        os.chdir(cwd)
    assert not MARKER.exists()


def test_seed_out_of_range_and_nan_values_are_refused() -> None:
    for section, value in ((("seed",), 2**70), (("seed",), -1), (("train", "grad_clip"), math.nan)):
        data = copy.deepcopy(VALID)
        _set(data, section, value)
        with pytest.raises(ConfigError):
            validate_recipe(data)


# ------------------------------------------------------------------ bad paths on the command line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = tiny_recipe()
    recipe["train"]["epochs"] = 1
    root = tmp_path_factory.mktemp("finished")
    return train(validate_recipe(recipe), out=root / "run", progress=False)


def test_every_command_refuses_bad_paths(tmp_path: Path, finished_run: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_as_text(tiny_recipe()))
    missing, plain_dir, a_file = tmp_path / "missing", tmp_path / "plain", tmp_path / "a-file"
    plain_dir.mkdir()
    (plain_dir / "notes.txt").write_text("not a run")
    a_file.write_text("x")
    weights = tmp_path / "w.pt"
    torch.save(build_model("mlp", num_classes=10, input_shape=SHAPE).state_dict(), weights)
    imp = ["import-weights", "--model", "mlp", "--dataset", "digits"]
    cases = [
        (["train", str(missing / "r.yaml")], "neither a file nor a known recipe"),
        (["train", str(recipe), "--out", str(a_file / "run")], "not a directory"),
        (["train", str(recipe), "--out", str(plain_dir)], "not empty"),
        (["train", "--resume", str(missing)], "not a unirobust run"),
        (["train", "--resume", str(plain_dir)], "not a unirobust run"),
        (["eval", str(missing)], "does not exist"),
        (["eval", str(plain_dir)], "not a unirobust run"),
        (["eval", str(a_file)], "not a readable safetensors"),
        (["report", str(missing)], "not a unirobust run"),
        (["report", str(plain_dir)], "not a unirobust run"),
        (["compare", str(missing), "--out", str(tmp_path / "cmp")], "does not exist"),
        (["compare", str(plain_dir), "--out", str(tmp_path / "cmp")], "not a run directory"),
        (["compare", str(a_file), "--out", str(tmp_path / "cmp")], "is a file"),
        (
            ["compare", str(finished_run), "--out", str(tmp_path / "cmp")],
            "has an evaluation summary",
        ),
        ([*imp[:1], str(missing / "w.pt"), *imp[1:], "--out", str(tmp_path / "o")], "not exist"),
        ([*imp[:1], str(plain_dir), *imp[1:], "--out", str(tmp_path / "o")], "refusing"),
        ([*imp[:1], str(weights), *imp[1:], "--out", str(a_file / "w")], "not a directory"),
        ([*imp[:1], str(weights), *imp[1:], "--out", str(a_file)], "exists already"),
        (["demo", "--out", str(a_file / "demo")], "not a directory"),
        (["demo", "--out", str(plain_dir)], "not empty"),
    ]
    before, run_before = _files(tmp_path), _files(finished_run)
    for args, needle in cases:
        _one_line_error(runner.invoke(app, args), needle)
    assert _files(tmp_path) == before and _files(finished_run) == run_before
    # an evaluation whose output cannot be written is refused before it attacks anything
    (finished_run / "eval").write_text("a file where eval/ should be")
    try:
        result = runner.invoke(app, ["eval", str(finished_run), "--threats", "linf:0.1"])
        _one_line_error(result, "not a directory")
        _one_line_error(runner.invoke(app, ["report", str(a_file)]), "not a unirobust run")
    finally:
        (finished_run / "eval").unlink()


def test_recipes_lists_unreadable_files_without_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.yaml").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "recipes" / "list.yaml").write_text("- 1\n- 2\n")
    monkeypatch.chdir(tmp_path)
    import unirobust.cli as cli

    monkeypatch.setattr(cli, "RECIPE_ROOTS", (tmp_path / "recipes",))
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0 and "bad.yaml" in result.output and "(unreadable" in result.output
