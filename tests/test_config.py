"""Every config group option and every recipe composes and instantiates; recipe values match the papers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, ROOT, compose_config
from trainer.builders import build_datamodule, build_model, build_trainer, effective_lr
from trainer.models import list_models

GROUPS = ("data", "optim", "sched", "trainer", "logger", "callbacks", "paths")
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))

# The papers' values (../shared/reference/recipes.md), one place for every recipe test.
RECIPE_FACTS = {
    "resnet": {
        "optim.opt": "sgd",
        "optim.lr": 0.1,
        "optim.momentum": 0.9,
        "optim.nesterov": False,
        "optim.weight_decay": 1e-4,
        "optim.ref_batch_size": 256,
        "data.batch_size": 256,
        "sched.sched": "multistep",
        "sched.milestones": [30, 60],
        "sched.decay_rate": 0.1,
        "trainer.max_epochs": 90,
    },
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_recipe_has_facts_to_check() -> None:
    assert RECIPES and set(RECIPES) == set(RECIPE_FACTS)


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_group_option_composes_and_instantiates(group: str, option: str, tiny_cfg, tmp_path: Path) -> None:
    overrides = [f"{group}={option}"]
    if option == "imagenet" or option == "imagefolder":
        overrides.append(f"data.root={tmp_path}")  # composes; folder contents are checked in test_data
    cfg = tiny_cfg(*overrides)
    node = cfg[group]
    model = build_model(cfg, num_classes=10)
    if group == "data":
        datamodule = build_datamodule(cfg)
        assert datamodule.batch_size == cfg.data.batch_size
    elif group == "optim":
        optimizer = instantiate(node, global_batch_size=cfg.data.batch_size)(model)
        assert isinstance(optimizer, torch.optim.Optimizer)
    elif group == "sched":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = instantiate(node)(optimizer, num_epochs=10, updates_per_epoch=5)
        assert scheduler.optimizer is optimizer
    elif group in ("trainer", "logger", "callbacks"):
        if group == "trainer" and option in ("gpu",) and not torch.cuda.is_available():
            pytest.skip("trainer=gpu needs a GPU to instantiate")
        trainer = build_trainer(cfg)
        assert trainer.max_epochs == cfg.trainer.max_epochs
    else:
        assert OmegaConf.to_container(node, resolve=True)


@pytest.mark.parametrize("name", list_models())
def test_every_catalogue_model_is_a_model_option(name: str) -> None:
    cfg = compose_config([f"model={name}"])
    assert cfg.model.name == name


def test_any_timm_model_is_an_option() -> None:
    cfg = compose_config(["model=timm/resnet10t"])
    assert cfg.model.name == "timm/resnet10t"
    assert build_model(cfg, num_classes=3).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_instantiates_and_matches_the_paper(recipe: str, tiny_cfg) -> None:
    header = (ROOT / "recipes" / f"{recipe}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert any("arXiv" in line or "NeurIPS" in line for line in header[:4]), "header cites the paper"
    paper = compose_config([f"recipe={recipe}"])
    for key, value in RECIPE_FACTS[recipe].items():
        actual = OmegaConf.select(paper, key)
        actual = OmegaConf.to_container(actual) if OmegaConf.is_config(actual) else actual
        assert actual == pytest.approx(value) if isinstance(value, float) else actual == value, key
    cfg = tiny_cfg(f"recipe={recipe}", "data.batch_size=64")
    model = build_model(cfg, num_classes=10)
    optimizer = instantiate(cfg.optim, global_batch_size=cfg.data.batch_size)(model)
    scheduler = instantiate(cfg.sched)(optimizer, num_epochs=cfg.trainer.max_epochs, updates_per_epoch=10)
    # the recipe's lr belongs to its batch; at batch 64 it is scaled linearly
    expected_lr = cfg.optim.lr * 64 / cfg.optim.ref_batch_size
    assert effective_lr(cfg) == pytest.approx(expected_lr)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr)
    assert scheduler is not None


def test_model_defaults_flow_into_data(tiny_cfg) -> None:
    cfg = tiny_cfg("model=alexnet", "data=imagefolder", "data.root=/nowhere")
    build_datamodule(cfg)
    assert (cfg.data.resolution, cfg.data.crop_ratio, cfg.data.interpolation) == (224, 0.875, "bilinear")
    assert cfg.data.mean == pytest.approx([0.485, 0.456, 0.406])
    # an explicit value wins over the model's
    cfg = tiny_cfg("model=alexnet", "data=imagefolder", "data.root=/nowhere", "data.resolution=160")
    build_datamodule(cfg)
    assert cfg.data.resolution == 160
