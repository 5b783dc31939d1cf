"""Sharing trained models: export a checkpoint as a timm-format folder, load one back, publish it on the Hugging Face
Hub.

An export holds `model.safetensors` (weights only), `config.json` (timm's hub format: architecture, num_classes,
num_features, pretrained_cfg, label_names, model_args), a model card `README.md`, `train_config.yaml`,
`results.json` and `training_curves.png`. timm's own architectures load with `timm.create_model("local-dir:<dir>",
pretrained=True)` alone; ours are registered into timm by `import trainer.models` (or through `load()` here).

timm's `save_for_hf` writes the weights and config.json, huggingface_hub's `ModelCard` the card; the checkpoint is
read, its weights chosen (raw / ema) and the folder written atomically by trainer/io.py.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import yaml
from huggingface_hub import ModelCard, ModelCardData
from timm.models import save_for_hf

from trainer.errors import CheckpointError, ConfigError, UserError
from trainer.io import atomic_folder, has_ema, model_weights, read_checkpoint, select_weights
from trainer.models import TIMM_PREFIX, create_model, get_entry
from trainer.models.complexity import measure

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
SOURCES = ("local-dir:", "hf-hub:")


class HubError(UserError):
    """Exporting or publishing cannot go on (an existing folder, a bad repo id, no token)."""


@dataclass(frozen=True)
class Export:
    out: Path
    architecture: str
    weights: str  # "raw" or "ema"
    files: dict[str, int]  # name -> size in bytes


# ---------------------------------------------------------------------------------------------------------------
# reading a checkpoint


def _model_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config["model"].get("kwargs") or {})


def rebuild(checkpoint: dict[str, Any], weights: str | None = None, ckpt: str | Path = "") -> tuple[nn.Module, str]:
    """The trained backbone (eval mode) with `weights` (raw or ema; null: the EMA weights where the run kept them)
    loaded strictly, and which they are; `ckpt` names the checkpoint in messages."""
    config = checkpoint["trainer_config"]
    classes = checkpoint.get("class_names")
    num_classes = len(classes) if classes else int(config["data"]["num_classes"])
    kind = select_weights(weights, has_ema(checkpoint["state_dict"]), key="weights", path=ckpt)[-1]
    model = create_model(config["model"]["name"], num_classes=num_classes, **_model_kwargs(config))
    try:
        model.load_state_dict(model_weights(checkpoint["state_dict"], kind), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's weights do not fit model '{config['model']['name']}': {e}") from None
    return model.eval(), kind


# ---------------------------------------------------------------------------------------------------------------
# export


def _data_config(config: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    data = config["data"]
    return {
        "input_size": (
            model.pretrained_cfg.get("input_size", (3, 224, 224))[0],
            data["resolution"],
            data["resolution"],
        ),
        "crop_pct": data["crop_ratio"],
        "interpolation": data["interpolation"],
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
    }


_SOURCE_WEIGHTS_KEYS = ("tag", "hf_hub_id", "url", "origin_url", "paper_ids", "paper_name", "notes", "license")


def _describe_weights(path: Path, config: dict[str, Any], license: str) -> None:
    """config.json describes these weights: drop what timm's pretrained_cfg says about its own weights."""
    # by hand: timm's save_for_hf keeps its source weights' tag, licence and paper (it drops only their location)
    hf_config = json.loads(path.read_text())
    pretrained = {k: v for k, v in hf_config["pretrained_cfg"].items() if k not in _SOURCE_WEIGHTS_KEYS}
    pretrained["license"] = license
    name = config["model"]["name"]
    if not name.startswith(TIMM_PREFIX) and get_entry(name).paper.arxiv:
        pretrained["paper_ids"] = f"arXiv:{get_entry(name).paper.arxiv}"
    hf_config["pretrained_cfg"] = pretrained
    size = hf_config.get("model_args", {}).get("img_size")
    if isinstance(size, list) and len(set(size)) == 1:  # a square size as one int: constructors typed `int` take it
        hf_config["model_args"]["img_size"] = size[0]
    path.write_text(json.dumps(hf_config, indent=4) + "\n")


def _run_dir(ckpt: Path, config: dict[str, Any]) -> Path | None:
    for candidate in (ckpt.resolve().parent.parent, Path(config.get("run_dir") or "")):
        if (candidate / "config.yaml").is_file() or (candidate / "results.json").is_file():
            return candidate
    return None


def _plot_curves(metrics_csv: Path, out: Path) -> bool:
    """training_curves.png: loss and top-1 per epoch from the run's metrics.csv."""
    if not metrics_csv.is_file():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        for key in ("train/loss_epoch", "val/loss", "train/top1", "val/top1", "val_ema/top1"):
            if row.get(key) and row.get("epoch"):
                series.setdefault(key, []).append((int(row["epoch"]) + 1, float(row[key])))
    if not series:
        return False
    fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(10, 4))
    for key, points in series.items():
        ax = ax_loss if key.endswith(("loss", "loss_epoch")) else ax_top1
        scale = 1.0 if ax is ax_loss else 100.0
        ax.plot([e for e, _ in points], [v * scale for _, v in points], marker="o", label=key)
    for ax, label in ((ax_loss, "loss"), (ax_top1, "top-1 (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def _dataset(config: dict[str, Any]) -> str:
    data = config["data"]
    if data.get("sample"):
        return "the bundled sample set (scikit-learn's handwritten digits, 10 classes, as JPEGs)"
    return f"ImageNet-layout folder '{Path(str(data['root'])).name}'"


def _card(
    *,
    config: dict[str, Any],
    architecture: str,
    kind: str,
    model: nn.Module,
    results: dict[str, Any] | None,
    curves: bool,
    license: str,
    repo_id: str | None,
    own: bool,
) -> str:
    """README.md: huggingface_hub's ModelCard with its metadata (ModelCardData) and the body written here."""
    name = config["model"]["name"]
    entry = None if name.startswith(TIMM_PREFIX) else get_entry(name)
    data = config["data"]
    with torch.device("meta"):
        meta = create_model(name, num_classes=model.num_classes, **_model_kwargs(config)).eval()
    measured = measure(meta, int(data["resolution"]))  # the inference network's parameters, as the papers count
    gmacs = measured.macs / 1e9
    aux = f" (auxiliary heads, training only: {measured.aux_params / 1e6:.2f} M more)" if measured.aux_params else ""
    recipe = (config.get("recipe_info") or {}).get("name") or "none (the config's defaults)"
    optim, sched, trainer_cfg = config.get("optim", {}), config.get("sched", {}), config.get("trainer", {})
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:<this folder>"
    lines = [f"# {name}", ""]
    if entry is not None:
        paper = entry.paper
        arxiv = f" ([arXiv:{paper.arxiv}](https://arxiv.org/abs/{paper.arxiv}))" if paper.arxiv else ""
        lines += [f"**Paper:** {paper.title}, {paper.authors}, {paper.year}{arxiv}.", ""]
    lines += [
        "## Model",
        "",
        f"- architecture: `{architecture}` ({'this package' if own else 'timm'}'s implementation)",
        f"- parameters: {measured.params / 1e6:.2f} M{aux}; {gmacs:.3f} GMACs per image at {data['resolution']} px",
        f"- classes: {model.num_classes}",
        f"- weights: {'the exponential moving average of the weights (EMA, decay ' + str(config['ema']['decay']) + ')' if kind == 'ema' else 'the trained (raw) weights'}",  # noqa: E501
        f"- input: {data['resolution']} px, crop ratio {data['crop_ratio']}, {data['interpolation']} interpolation, "
        f"mean {list(data['mean'])}, std {list(data['std'])}",
        "",
        "## Training",
        "",
        f"- dataset: {_dataset(config)}",
        f"- recipe: {recipe}",
        f"- optimizer {optim.get('opt')}, lr {optim.get('lr')} (for batch {optim.get('ref_batch_size')}, scaling "
        f"{optim.get('lr_scaling', 'none')}), weight decay {optim.get('weight_decay')}; "
        f"batch {data.get('batch_size')}; "
        f"{sched.get('sched')} schedule; {trainer_cfg.get('max_epochs')} epochs; label smoothing "
        f"{config.get('loss', {}).get('label_smoothing')}",
        "- the full config is `train_config.yaml`",
        "",
        "## Results",
        "",
    ]
    if results:
        top1, top5 = results.get("top1"), results.get("top5")
        lines.append(
            f"Validation after {results.get('epochs')} epochs, single centre crop ({data['resolution']} px, crop ratio "
            f"{data['crop_ratio']}) on {_dataset(config)}: top-1 {top1:.2f}%, top-5 {top5:.2f}%"
            + (f"; EMA top-1 {results['top1_ema']:.2f}%" if results.get("top1_ema") is not None else "")
            + " (`results.json`)."
        )
    else:
        lines.append("The run directory held no results.json.")
    if entry is not None and entry.top1 is not None:
        top5 = f", top-5 {entry.top5}%" if entry.top5 is not None else ""
        lines.append(f"\nThe paper reports top-1 {entry.top1}%{top5} on ImageNet ({entry.protocol}).")
    if curves:
        lines += ["", "![training curves](training_curves.png)"]
    load_timm = (
        ["import timm", f'model = timm.create_model("{source}", pretrained=True).eval()']
        if not own
        else [
            "import timm",
            "import trainer.models  # registers this package's architectures with timm",
            f'model = timm.create_model("{source}", pretrained=True).eval()',
        ]
    )
    lines += [
        "",
        "## How to load",
        "",
        "With timm"
        + (" (the architecture is this package's: install it and import `trainer.models` first)" if own else "")
        + ":",
        "",
        "```python",
        *load_timm,
        "```",
        "",
        "With this package:",
        "",
        "```python",
        "import trainer.hub",
        f'model = trainer.hub.load("{source}")',
        "```",
        "",
        "Preprocessing: `timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))`; class names "
        "are in `config.json` (`label_names`).",
        "",
        f"Licence: {license}. Exported by trainer on {date.today().isoformat()}.",
        "",
    ]
    metadata = ModelCardData(
        library_name="timm",
        license=license,
        tags=["image-classification", "timm", "trainer"],
        pipeline_tag="image-classification",
    )
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n".join(lines)))


def export(
    ckpt: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    weights: str | None = None,
    license: str = "apache-2.0",
    repo_id: str | None = None,
) -> Export:
    """Write checkpoint `ckpt` as a timm-format folder `out` (see the module docstring) with `weights` (raw or ema;
    null: the EMA weights where the run kept them)."""
    ckpt, out = Path(ckpt), Path(out)
    if out.exists() and not overwrite:
        raise HubError(f"export folder '{out}' exists; pass overwrite=true to replace it")
    checkpoint = read_checkpoint(ckpt)
    config = checkpoint["trainer_config"]
    model, kind = rebuild(checkpoint, weights, ckpt)
    name = config["model"]["name"]
    own = not name.startswith(TIMM_PREFIX) and get_entry(name).source == "own"
    architecture = model.pretrained_cfg["architecture"]

    with atomic_folder(out, overwrite=overwrite) as tmp:  # a failure never leaves half an export
        model_config = {"label_names": list(checkpoint.get("class_names") or [])}
        data_config = _data_config(config, model)
        save_for_hf(model, str(tmp), model_config, safe_serialization=True, data_config=data_config)
        _describe_weights(tmp / "config.json", config, license)
        (tmp / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        run_dir = _run_dir(ckpt, config)
        results = None
        if run_dir is not None and (run_dir / "results.json").is_file():
            results = json.loads((run_dir / "results.json").read_text())
            results = {k: v for k, v in results.items() if k not in ("run_dir", "best_ckpt", "last_ckpt")}
        (tmp / "results.json").write_text(
            json.dumps({**(results or {}), "weights": kind, "checkpoint_epoch": checkpoint.get("epoch")}, indent=2)
            + "\n"
        )
        curves = run_dir is not None and _plot_curves(run_dir / "metrics.csv", tmp / "training_curves.png")
        card = _card(
            config=config,
            architecture=architecture,
            kind=kind,
            model=model,
            results=results,
            curves=curves,
            license=license,
            repo_id=repo_id,
            own=own,
        )
        (tmp / "README.md").write_text(card)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return Export(out=out, architecture=architecture, weights=kind, files=files)


# ---------------------------------------------------------------------------------------------------------------
# loading


def load(source: str, **kwargs: Any) -> nn.Module:
    """A model exported here, from `local-dir:<dir>` or `hf-hub:<org/name>`, in eval mode (any architecture: ours
    are registered with timm by importing this module)."""
    if not source.startswith(SOURCES):
        raise ConfigError(f"'{source}' is neither local-dir:<folder> nor hf-hub:<org/name>")
    if source.startswith("local-dir:") and not (Path(source[len("local-dir:") :]) / "config.json").is_file():
        raise CheckpointError(f"'{source[len('local-dir:') :]}' holds no config.json (not an exported model)")
    return timm.create_model(source, pretrained=True, **kwargs).eval()


# ---------------------------------------------------------------------------------------------------------------
# publishing


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or ""):
        raise HubError(f"repo_id '{repo_id}' is not of the form <org>/<name> (e.g. my-lab/resnet50-imagenet)")
    return repo_id


def hf_token() -> str | None:
    """The Hugging Face token from HF_TOKEN or `hf auth login`'s stored token; only ever kept in memory."""
    from huggingface_hub import get_token

    return get_token()


def publish(
    ckpt: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    out: str | Path | None = None,
    overwrite: bool = False,
    weights: str | None = None,
    license: str = "apache-2.0",
    echo: Callable[[str], None] = print,
) -> Export:
    """Export `ckpt` and upload the folder to the Hub as model repo `repo_id` (created if missing). `dry_run` lists
    the files and their sizes and uploads nothing."""
    check_repo_id(repo_id)
    token = None if dry_run else hf_token()
    if not dry_run and not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was uploaded")
    keep = out is not None
    folder = Path(out) if keep else Path(tempfile.mkdtemp(prefix="trainer-publish-")) / repo_id.split("/")[1]
    try:
        result = export(ckpt, folder, overwrite=overwrite, weights=weights, license=license, repo_id=repo_id)
        visibility = "private" if private else "public"
        echo(f"{'would upload' if dry_run else 'uploading'} to {repo_id} ({visibility} model repo):")
        for name, size in result.files.items():
            echo(f"  {name}  {size} bytes")
        echo(f"  total  {sum(result.files.values())} bytes")
        if dry_run:
            found = "found" if hf_token() else "none: set HF_TOKEN or run `hf auth login` before publishing"
            echo(f"token: {found}; nothing was uploaded (dry run)")
            return result
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"Upload {result.architecture} exported by trainer",
        )
        echo(f"uploaded: {getattr(commit, 'commit_url', repo_id)}")
        return result
    finally:
        if not keep:
            shutil.rmtree(folder.parent, ignore_errors=True)
