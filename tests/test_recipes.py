"""The paper recipes (recipes/*.yaml): each composes and instantiates with every catalogue model of its families, says
what it is (recipe_info), checks the model it is given, trains one real epoch on the bundled sample set, and is listed
by scripts/recipes.py. The papers' values themselves are checked in test_config.py (PAPER_RECIPES)."""

from __future__ import annotations

import importlib.util
import math
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tests.helpers import ROOT, compose_config, tiny_overrides
from trainer.builders import build_datamodule, build_model, build_trainer, check_recipe, effective_lr
from trainer.errors import ConfigError
from trainer.models import get_entry, list_models
from trainer.train import train

RECIPE_DIR = ROOT / "recipes"
RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
INFO_KEYS = {
    "name",
    "title",
    "authors",
    "year",
    "arxiv",
    "sections",
    "families",
    "model",
    "top1",
    "top5",
    "protocol",
    "batch_size",
    "epochs",
    "requires",
}
OPTIONAL_INFO_KEYS = {"cifar_error"}  # the CIFAR recipes: their paper's test errors by network and protocol
REQUIREMENTS = {"drop_path"}

# What a recipe's header tells users to add for a model of its families that lacks a piece of the paper's setup.
DOCUMENTED_OVERRIDES: dict[tuple[str, str], list[str]] = {}
# Models of a recipe's family that cannot take the recipe yet: a package change, not a recipe one (strict: these
# start passing, and must be removed from here, once the model gains what is missing).
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def _recipe(recipe: str) -> DictConfig:
    """The recipe file as written (not composed)."""
    return OmegaConf.load(RECIPE_DIR / f"{recipe}.yaml")


def _info(recipe: str) -> DictConfig:
    return _recipe(recipe).recipe_info


def _min_resolution(name: str) -> int:
    return max(32, get_entry(name).min_resolution)


def _family_models(recipe: str) -> list[str]:
    families = set(_info(recipe).families)
    return [name for name in list_models() if get_entry(name).family in families]


@pytest.mark.unit
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_info_is_complete(recipe: str) -> None:
    info = _info(recipe)
    missing, extra = INFO_KEYS - set(info), set(info) - INFO_KEYS - OPTIONAL_INFO_KEYS
    assert not missing and not extra, f"recipe_info keys: missing {missing}, extra {extra}"
    assert info.name == recipe
    assert info.title and info.authors and info.sections and info.protocol
    assert 1990 <= info.year <= 2030
    catalogued_families = {get_entry(n).family for n in list_models()}
    assert info.families and set(info.families) <= catalogued_families, f"unknown families in {list(info.families)}"
    entry = get_entry(info.model)  # a catalogue name
    assert entry.family in info.families
    assert set(info.requires) <= REQUIREMENTS
    for key in ("top1", "top5"):
        assert info[key] is None or 0 < info[key] <= 100, key
    if info.top1 is not None and info.top5 is not None:
        assert info.top1 <= info.top5
    for key in ("batch_size", "epochs"):
        assert info[key] is None or info[key] > 0, key
    header = "\n".join(line for line in (RECIPE_DIR / f"{recipe}.yaml").read_text().splitlines() if line[:1] == "#")
    if info.arxiv is not None:
        assert re.fullmatch(r"\d{4}\.\d{4,5}", str(info.arxiv)) and f"arXiv:{info.arxiv}" in header
    if entry.paper.title == info.title:  # the recipe's paper is the model's: the same reported numbers
        for key in ("top1", "top5"):
            if getattr(entry, key) is not None:
                assert info[key] == pytest.approx(getattr(entry, key)), key


# every (recipe, catalogue model of its families) pair; `make test-fast` builds each recipe's own model only
RECIPE_MODELS = [
    pytest.param(recipe, name, id=f"{recipe}-{name}", marks=() if name == _info(recipe).model else pytest.mark.slow)
    for recipe in RECIPES
    for name in _family_models(recipe)
]


@pytest.mark.unit
@pytest.mark.parametrize(("recipe", "name"), RECIPE_MODELS)
def test_recipe_builds_with_every_model_of_its_families(recipe: str, name: str, tiny_cfg) -> None:
    """Compose, build the model (meta device: no weights), check the recipe against it and instantiate optimizer and
    scheduler as train() would. The train transform and the trainer (callbacks included) do not depend on the model:
    built with the recipe's own model only."""
    overrides = DOCUMENTED_OVERRIDES.get((recipe, name), [])
    cfg = tiny_cfg(f"recipe={recipe}", f"model={name}", f"data.resolution={_min_resolution(name)}", *overrides)
    if (recipe, name) in KNOWN_GAPS:
        with pytest.raises(ConfigError), torch.device("meta"):
            check_recipe(cfg, build_model(cfg, num_classes=10))
        return
    with torch.device("meta"):
        model = build_model(cfg, num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a model of the recipe's own family: no cross-family warning
        check_recipe(cfg, model)
    optimizer = instantiate(cfg.optim, global_batch_size=cfg.data.batch_size)(model)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(effective_lr(cfg))
    epochs = _recipe(recipe).trainer.max_epochs
    scheduler = instantiate(cfg.sched)(optimizer, num_epochs=epochs, updates_per_epoch=10)
    assert scheduler.optimizer is optimizer
    if name == _info(recipe).model:
        datamodule = build_datamodule(cfg)
        datamodule.setup("fit")
        assert datamodule.train_set.transform.transforms  # the training loader's pipeline builds
        assert build_trainer(cfg).max_epochs == cfg.trainer.max_epochs


@pytest.mark.unit
def test_a_recipe_given_a_model_of_another_family_warns(tiny_cfg, caplog) -> None:
    cfg = tiny_cfg("recipe=vgg", "model=resnet18")
    with torch.device("meta"):
        model = build_model(cfg, num_classes=10)
    with caplog.at_level("WARNING", logger="trainer.builders"):  # a log line, not a Python warning
        check_recipe(cfg, model)
    assert "recipe 'vgg' was written for the vgg family; model 'resnet18' is resnet" in caplog.text


@pytest.mark.unit
def test_a_recipe_needing_aux_heads_fails_on_a_model_without_them(tiny_cfg) -> None:
    # a model that has no auxiliary head: the recipe's aux loss cannot apply
    cfg = tiny_cfg("recipe=inception_v3", "model=bn_inception", "~model.kwargs.aux_logits")
    with torch.device("meta"):
        model = build_model(cfg, num_classes=10)
    with pytest.raises(ConfigError) as error:
        check_recipe(cfg, model)
    message = str(error.value)
    assert "recipe 'inception_v3'" in message and "model 'bn_inception'" in message and "\n" not in message
    # the same family's model with its heads switched off
    cfg = tiny_cfg("recipe=googlenet", "model=googlenet_bn", "model.kwargs.aux_logits=false")
    with torch.device("meta"):
        model = build_model(cfg, num_classes=10)
    with pytest.raises(ConfigError, match=r"recipe 'googlenet' .* model 'googlenet_bn' has none"):
        check_recipe(cfg, model)
    # a model whose constructor takes no aux_logits fails as it is built, naming the model and the argument
    cfg = tiny_cfg("recipe=inception_v3", "model=bn_inception")
    with pytest.raises(ConfigError) as error:
        build_model(cfg, num_classes=10)
    assert "bn_inception" in str(error.value) and "aux_logits" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.unit
def test_a_recipe_needing_drop_path_fails_on_a_model_without_it(tiny_cfg) -> None:
    cfg = tiny_cfg("recipe=efficientnet", "model=efficientnet_b0", "model.drop_path_rate=0")
    with torch.device("meta"):
        model = build_model(cfg, num_classes=10)
    with pytest.raises(ConfigError, match=r"recipe 'efficientnet' schedules drop-path but model 'efficientnet_b0'"):
        check_recipe(cfg, model)


@pytest.mark.unit
def test_plateau_is_the_adaptive_form_of_a_recipe(tiny_cfg) -> None:
    cfg = tiny_cfg("recipe=alexnet", "sched=plateau")
    assert (cfg.sched.sched, cfg.sched.interval, cfg.optim.lr) == ("plateau", "epoch", 0.01)


# One small variant of each recipe's families, trained for one real epoch at (near) its smallest input.
SMOKE_MODELS = {
    "alexnet": "alexnet",
    "bn_inception": "bn_inception",
    "darknet19": "darknet19",
    "densenet": "densenet121",
    "efficientnet": "efficientnet_b0",
    "fractalnet": "fractalnet20_cifar",
    "googlenet": "googlenet",
    "inception_v3": "inception_v3",
    "inception_v4": "inception_resnet_v1",
    "mobilenet_v1": "mobilenet_v1_025_128",
    "mobilenet_v2": "mobilenet_v2_100",
    "nasnet": "nasnet_a_mobile",
    "preact_resnet": "preact_resnet164_cifar",
    "resnet": "resnet18",
    "resnet50_ffcv": "resnet18",
    "resnet50_nvidia": "resnet18",
    "resnext": "resnext50_32x4d",
    "shufflenet_v1": "shufflenet_v1_g3_0_25",
    "shufflenet_v2": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_1",
    "stochastic_depth": "resnet18",
    "vgg": "vgg11",
    "wide_resnet": "wide_resnet40_4_cifar",
    "xception": "xception",
    "resnet_cifar": "resnet20_cifar",
    "preact_resnet_cifar": "preact_resnet164_cifar",
    "wide_resnet_cifar": "wide_resnet40_4_cifar",
    "stochastic_depth_cifar": "resnet20_cifar",
    "densenet_cifar": "densenet40_k12_cifar",
    "resnext_cifar": "resnext29_8x64d_cifar",
    "fractalnet_cifar": "fractalnet20_cifar",
}
SMOKE_RESOLUTION = {"inception_v3": 299}  # its auxiliary head needs 17x17 maps (299 px) in training


@pytest.mark.unit
def test_every_recipe_has_a_smoke_model() -> None:
    assert set(SMOKE_MODELS) == set(RECIPES)
    for recipe, name in SMOKE_MODELS.items():
        assert get_entry(name).family in _info(recipe).families, recipe


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    [
        pytest.param(r, marks=pytest.mark.xfail(reason=KNOWN_GAPS[r, SMOKE_MODELS[r]], raises=ConfigError, strict=True))
        if (r, SMOKE_MODELS.get(r)) in KNOWN_GAPS
        else r
        for r in RECIPES
    ],
)
def test_recipe_trains_one_epoch(recipe: str, cache_dir: Path, sample_root: Path, tmp_path: Path) -> None:
    name = SMOKE_MODELS[recipe]
    overrides = [
        *tiny_overrides(tmp_path / "run", cache_dir),
        f"recipe={recipe}",
        f"model={name}",
        f"data.resolution={SMOKE_RESOLUTION.get(recipe, _min_resolution(name))}",
        "data.batch_size=4",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "callbacks.checkpoint=null",  # VGG's 0.5 GB of weights need not go to disk twice
        "callbacks.last_checkpoint=null",
        "+trainer.enable_checkpointing=false",
    ]
    written = _recipe(recipe)
    if OmegaConf.select(written, "sched.warmup_prefix"):
        overrides.append("sched.warmup_epochs=0.5")  # the warm-up has to fit in the one epoch
    results = train(compose_config(overrides))
    assert results["epochs"] == 1 and results["global_step"] == 2
    assert math.isfinite(results["val_loss"]) and 0 <= results["top1"] <= 100
    if OmegaConf.select(written, "ema.decay"):
        assert 0 <= results["top1_ema"] <= 100  # the averaged weights are validated too


def _recipes_script() -> Any:
    spec = importlib.util.spec_from_file_location("recipes_script", ROOT / "scripts" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.unit
def test_recipes_script_lists_the_recipes(capsys) -> None:
    script = _recipes_script()
    script.main(["resnet*"])
    out = capsys.readouterr().out
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    expected = {name for name in RECIPES if name.startswith("resnet")}  # the wildcard, not resnext
    assert set(lines) == expected and {"resnet", "resnet50_ffcv", "resnet50_nvidia", "resnet_cifar"} <= expected
    for cell in ("He et al. 2016", "0.1 @ 256", "steps 30/60", "1e-4 all", "77.15 (resnet50)"):
        assert cell in lines["resnet"], cell
    for cell in ("1.7 @ 4096", "warm-up 2 ep, linear to 0", "LS 0.1"):
        assert cell in lines["resnet50_ffcv"], cell
    assert "0.256 @ 256" in lines["resnet50_nvidia"] and "3.052e-5" in lines["resnet50_nvidia"]  # 1/32768


@pytest.mark.unit
def test_recipes_script_describes_schedules_and_regularisation() -> None:
    script = _recipes_script()
    inception = script.row("inception_v3")
    assert inception["schedule"] == "x0.94 every 2 ep"
    assert inception["regularisation"] == "LS 0.1, aux 0.4, EMA 0.9999, clip 2"
    assert inception["optimizer"] == "rmsproptf" and inception["lr @ batch"] == "0.045 @ 32"
    assert script.row("squeezenet")["schedule"] == "poly p=0.5"
    assert script.row("stochastic_depth")["regularisation"] == "drop-path 0.5 (batch)"
    assert script.row("efficientnet")["schedule"] == "warm-up 5 ep, x0.97 every 2.4 ep"
    with pytest.raises(SystemExit):
        script.main(["no_such_recipe*"])
