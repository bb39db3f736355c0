"""Recipe validation: unknown keys, bad values, overrides, shipped recipes all load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import generalist_tiny, tiny_recipe

from unirobust.config import apply_override, load_recipe, parse_override, validate_recipe
from unirobust.errors import ConfigError

RECIPES = sorted(
    p for p in (Path(__file__).parents[1] / "recipes").rglob("*.yaml") if not p.name.startswith("_")
)


def test_shipped_recipes_validate() -> None:
    assert len(RECIPES) >= 8
    for path in RECIPES:
        config = load_recipe(path)
        assert config.name == path.stem


def test_extends_merges_sections_and_refuses_cycles(tmp_path: Path) -> None:
    base = tiny_recipe()
    (tmp_path / "_base.yaml").write_text(yaml.safe_dump(base))
    child = tmp_path / "child.yaml"
    child.write_text("extends: _base.yaml\nname: child\ntrain: {epochs: 7}\nmodel: {options: {}}\n")
    config = load_recipe(child)
    assert config.name == "child" and config.train.epochs == 7  # merged, not replaced
    assert config.model.name == "mlp" and config.model.options == {}  # an empty mapping clears
    assert config.train.experts[0].name == "natural" and config.data.name == "digits"
    (tmp_path / "_base.yaml").write_text("extends: child.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(child)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_recipe(latin)


def test_unknown_key_names_key_closest_and_file(tmp_path: Path) -> None:
    data = tiny_recipe()
    data["train"]["epochz"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert "train.epochz" in msg and "did you mean 'epochs'" in msg and str(path) in msg
    assert "\n" not in msg


def test_nested_unknown_key_lists_valid_keys() -> None:
    data = tiny_recipe()
    data["train"]["experts"][0]["optimizer"]["momentun"] = 0.9
    with pytest.raises(ConfigError, match="did you mean 'momentum'"):
        validate_recipe(data)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (["train", "epochs"], 0, "train.epochs"),
        (["data", "batch_size"], "many", "data.batch_size"),
        (["train", "experts", 0, "objective", "name"], "fgsm", "natural"),
    ],
)
def test_bad_values_say_what_is_allowed(path: list, value: object, needle: str) -> None:
    data = tiny_recipe()
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=needle):
        validate_recipe(data)


def test_bad_threat_and_missing_threat() -> None:
    data = tiny_recipe()
    data["train"]["experts"][0]["objective"] = {"name": "pgd_at", "threat": "linf:-1"}
    with pytest.raises(ConfigError, match=r"linf:-1|radius|eps"):
        validate_recipe(data)
    data["train"]["experts"][0]["objective"] = {"name": "pgd_at"}
    with pytest.raises(ConfigError, match=r"objective .pgd_at.: missing required key .threat."):
        validate_recipe(data)


def test_unknown_dataset_and_model_are_listed() -> None:
    with pytest.raises(ConfigError, match="fashion_mnist"):
        validate_recipe(tiny_recipe(data={"name": "mnist-ish"}))
    with pytest.raises(ConfigError, match="lenet"):
        validate_recipe(tiny_recipe(model={"name": "vgg99"}))


def test_two_experts_need_merge_and_weights_sum_to_one() -> None:
    data = generalist_tiny()
    data["train"]["merge"] = {"name": "none"}
    with pytest.raises(ConfigError, match="merge rule"):
        validate_recipe(data)
    data = generalist_tiny()
    data["train"]["generalist"]["beta_values"] = [1.0, 1.0, 1.2, 0.4]
    with pytest.raises(ConfigError):
        validate_recipe(data)


def expand_experts(config):
    """The single stage's experts after the preset expanded (what stages.json records)."""
    return config.train.resolved_stages()[0].experts


def test_generalist_preset_expansion() -> None:
    config = validate_recipe(generalist_tiny())
    stage = config.train.resolved_stages()[0]
    experts = stage.experts
    assert [e.name for e in experts] == ["robust", "natural"]
    assert experts[0].objective.name == "pgd_at" and experts[1].objective.name == "natural"
    assert stage.merge.weights["robust"]["values"] == [1.0, 1.0, 1.0, 0.4]
    assert stage.merge.weights["natural"]["values"] == pytest.approx([0.0, 0.0, 0.0, 0.6])
    assert experts[0].optimizer.weight_decay == 3.5e-3 and experts[1].optimizer.weight_decay == 5e-4
    data = generalist_tiny()
    data["train"]["generalist"]["preset"] = "linf_l2"
    names = [str(e.objective.threat) for e in expand_experts(validate_recipe(data))]
    assert names == ["linf:0.1", "l2:0.5"]


def test_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()))
    config = load_recipe(path, ["train.epochs=7", "train.experts.0.lr_schedule.value=0.2"])
    assert config.train.epochs == 7
    assert config.train.experts[0].lr_schedule["value"] == 0.2
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="index"):
        apply_override({"x": [1]}, ["x", "4"], 2)
    with pytest.raises(ConfigError, match="unknown key 'seedz'"):
        load_recipe(path, ["seedz=1"])


def test_missing_recipe_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_preset_experts_share_lr_and_weights_sum_to_one() -> None:
    """Pitfall 6 (natural expert on the robust lr schedule) and oracle 5 for every preset."""
    from unirobust.experts.ema_mix import check_mix_weights
    from unirobust.experts.schedules import schedule_for

    for preset in ("nat_linf", "linf_l2"):
        data = generalist_tiny()
        data["train"]["generalist"]["preset"] = preset
        config = validate_recipe(data)
        stage = config.train.resolved_stages()[0]
        experts = stage.experts
        assert experts[0].lr_schedule == experts[1].lr_schedule
        epochs = config.train.epochs
        weights = [schedule_for(stage.merge.weights[e.name], epochs, e.name) for e in experts]
        check_mix_weights(weights, epochs)
        for epoch in range(1, epochs + 1):
            assert sum(w.at(epoch, 0, 10) for w in weights) == pytest.approx(1.0, abs=1e-9)


def test_preset_steps_validation_and_official_eps() -> None:
    data = generalist_tiny()
    del data["validation"]
    data["train"]["generalist"]["attack_steps"] = 20
    config = validate_recipe(data)
    robust = expand_experts(config)[0].objective
    assert robust.step_size == pytest.approx(0.1 / 4)  # eps/4 whatever the step count
    assert [str(t) for t in config.validation.threats] == ["linf:0.1"]  # the preset's norm
    data["train"]["generalist"].update(official_eps=True, robust_objective="trades")
    config = validate_recipe(data)
    robust = expand_experts(config)[0].objective
    assert (robust.name, str(robust.threat), robust.step_size) == ("trades", "linf:0.031", 0.007)
    assert [str(t) for t in config.validation.threats] == ["linf:0.031"]
    data["train"]["generalist"].update(official_eps=False, preset="linf_l2")
    threats = validate_recipe(data).validation.threats
    assert [str(t) for t in threats] == ["linf:0.1", "l2:0.5"]


def test_distributed_mode_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    from unirobust.pipeline import distributed_mode

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed_mode(validate_recipe(generalist_tiny()), 2) == "experts"
    assert distributed_mode(validate_recipe(tiny_recipe()), 1) == "data"
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert distributed_mode(validate_recipe(generalist_tiny()), 2) == "data"
