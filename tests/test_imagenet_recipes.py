"""The ImageNet RAMP fine-tuning recipes carry multinorm.md §6's row and §8's evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from unirobust.config import load_recipe
from unirobust.experts.schedules import schedule_for
from unirobust.threats import L1Ball, L2Ball, LinfBall

RECIPES = Path(__file__).parents[1] / "recipes" / "paper" / "multinorm"


@pytest.mark.parametrize(
    ("stem", "model", "lr"),
    [("imagenet-ramp-ft-rn50", "resnet50", 0.005), ("imagenet-ramp-ft-xcit-s12", "xcit_s12", 1e-4)],
)
def test_imagenet_ramp_recipe(stem: str, model: str, lr: float) -> None:
    config = load_recipe(RECIPES / f"{stem}.yaml")
    assert config.model.name == model and config.model.options == {}
    assert config.init_from is not None and config.init_from.path.startswith("weights/")
    assert config.data.name == "imagefolder" and config.data.batch_size == 64
    (stage,) = config.train.resolved_stages()
    assert stage.epochs == 1 and stage.merge.name == "none"  # no GP in fine-tuning (§4.3)
    (expert,) = stage.experts
    objective = expert.objective
    assert objective.name == "ramp" and objective.lam == 0.5
    assert objective.steps == {"linf": 5, "l1": 15}
    assert objective.attacked_norms() == ("linf", "l1")  # §4.1, standard ImageNet radii
    radii = {t.norm: t.eps for t in objective.threats}
    assert radii == pytest.approx({"linf": 4 / 255, "l2": 2.0, "l1": 255.0}, rel=1e-12)
    opt = expert.optimizer
    assert (opt.name, opt.momentum, opt.weight_decay, opt.no_decay) == ("sgd", 0.9, 1e-4, [])
    schedule = schedule_for(expert.lr_schedule, stage.epochs, "lr")
    n = 300  # piecewise-imagenet: thirds of (i + 1) / n_batches
    assert [schedule.at(1, i, n) for i in (0, 98, 99, 198, 199, 299)] == pytest.approx(
        [lr, lr, lr / 10, lr / 10, lr / 100, lr / 100]
    )
    ev = config.eval
    assert ev.suite == "aa-apgd" and ev.union_only and ev.checkpoints == ["last"]
    assert ev.points == "imagenet-val-10k" and ev.n == 10_000
    assert [type(t) for t in ev.threats] == [LinfBall, L2Ball, L1Ball]
    assert {t.norm: t.eps for t in ev.threats} == radii
