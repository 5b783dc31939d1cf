"""The paper recipes (recipes/*.yaml) side by side: each composed with its paper's model, as train.py would run it.

    python scripts/recipes.py            # every recipe
    python scripts/recipes.py 'resnet*'  # a shell-style wildcard on recipe names

Columns: optimizer, lr at the batch it belongs to (rescaled linearly to data.batch_size at run time), schedule,
weight decay ("all": norm layers and biases decayed too), epochs, batch, regularisation, and the paper's top-1.
"""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from trainer.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("recipe", "paper", "optimizer", "lr @ batch", "schedule", "wd", "epochs", "batch", "regularisation", "top-1")


def list_recipes(pattern: str | None = None) -> list[str]:
    names = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def compose_recipe(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The config `python train.py recipe=<name> model=<its paper's model>` runs with."""
    model = OmegaConf.load(ROOT / "recipes" / f"{name}.yaml").recipe_info.model
    args = [f"recipe={name}", f"model={model}", *(overrides or [])]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=args)


def _num(x: float) -> str:
    """Short: 0.1, 2.4, 5e-4, 3.052e-5."""
    if x and abs(x) < 1e-3:
        mantissa, exponent = f"{x:.3e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"


def schedule(sched: DictConfig) -> str:
    """The lr schedule in a few words: "x0.94 every 2 ep", "steps 30/60", "poly p=4", ..."""
    kind = sched.sched
    rate = _num(sched.get("decay_rate", 0.1))
    if kind == "multistep":
        steps = "/".join(_num(m) for m in sched.milestones)
        text = f"steps {steps}" if rate == "0.1" else f"x{rate} at {steps}"
    elif kind in ("step", "exponential"):
        text = f"x{rate} every {_num(sched.decay_epochs)} ep"
    elif kind == "poly":
        text = f"poly p={_num(sched.power)}"
    elif kind == "linear":
        text = "linear to 0" if not sched.get("min_lr") else f"linear to {_num(sched.min_lr)}"
    elif kind == "plateau":
        text = f"plateau x{rate}, patience {sched.patience_epochs}"
    else:
        text = kind
    if sched.get("warmup_epochs"):
        text = f"warm-up {_num(sched.warmup_epochs)} ep, " + text
    return text


def regularisation(cfg: DictConfig) -> str:
    parts = []
    if cfg.model.get("drop_rate"):
        parts.append(f"dropout {_num(cfg.model.drop_rate)}")
    if cfg.model.get("drop_path_rate"):
        mode = cfg.model.get("drop_path_mode", "row")
        parts.append(f"drop-path {_num(cfg.model.drop_path_rate)}" + (" (batch)" if mode == "batch" else ""))
    if cfg.get("callbacks") and cfg.callbacks.get("scheduled_drop_path"):
        parts.append("scheduled")
    if cfg.loss.label_smoothing:
        parts.append(f"LS {_num(cfg.loss.label_smoothing)}")
    if cfg.loss.aux_weights:
        parts.append("aux " + "/".join(_num(w) for w in cfg.loss.aux_weights))
    if cfg.ema.get("decay"):
        parts.append(f"EMA {_num(cfg.ema.decay)}")
    if cfg.trainer.get("gradient_clip_val"):
        parts.append(f"clip {_num(cfg.trainer.gradient_clip_val)}")
    return ", ".join(parts) or "-"


def paper(info: DictConfig) -> str:
    authors = [a.strip() for a in str(info.authors).split(",")]
    return f"{authors[0]}{' et al.' if len(authors) > 1 else ''} {info.year}"


def row(name: str) -> dict[str, str]:
    """One table row: the recipe's values as composed (what a run uses, before lr scaling)."""
    cfg = compose_recipe(name)
    info, optim = cfg.recipe_info, cfg.optim
    top1: Any = info.top1  # as the recipe states it (80.0, 77.15)
    return {
        "recipe": name,
        "paper": paper(info),
        "optimizer": optim.opt + (" nesterov" if optim.opt == "sgd" and optim.get("nesterov") else ""),
        "lr @ batch": f"{_num(optim.lr)} @ {optim.ref_batch_size}",
        "schedule": schedule(cfg.sched),
        "wd": _num(optim.weight_decay) + (" all" if optim.get("decay_norm_and_bias") else ""),
        "epochs": str(cfg.trainer.max_epochs),
        "batch": str(cfg.data.batch_size),
        "regularisation": regularisation(cfg),
        "top-1": f"{top1} ({info.model})" if top1 is not None else "-",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python scripts/recipes.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style wildcard on recipe names, e.g. 'resnet*'")
    args = parser.parse_args(argv)
    names = list_recipes(args.pattern)
    if not names:
        parser.error(f"no recipe matches '{args.pattern}'; recipes: {', '.join(list_recipes())}")
    table = Table(title="paper recipes (python train.py recipe=<recipe> model=<variant>)")
    for column in COLUMNS:
        table.add_column(column)
    for name in names:
        table.add_row(*row(name).values())
    console = Console()
    if not console.is_terminal:  # piped or captured: no wrapping, the table is for reading or grepping
        console = Console(width=220)
    console.print(table)


if __name__ == "__main__":
    main()
