"""Export, loading and publishing (trainer.hub, scripts/export.py, scripts/publish.py) on tiny real runs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from omegaconf import OmegaConf

from tests.helpers import PYTHON, ROOT, compose_config, run_script
from trainer.cli import EXIT_USER_ERROR
from trainer.errors import CheckpointError
from trainer.hub import HubError, check_repo_id, export, load, publish, read_checkpoint, rebuild
from trainer.models import create_model, get_entry, list_models
from trainer.models.weights import read_state_dict
from trainer.resolve import resolve_config

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtoken1234"


@pytest.fixture(scope="module")
def resnet_ckpt(trained_run) -> Path:
    """The session's `trained_run`: ResNet-18 (a timm architecture) with EMA weights; export only reads it."""
    return trained_run.ckpt


def _untrained_checkpoint(name: str, resolution: int, path: Path) -> nn.Module:
    """A checkpoint as train.py writes it (raw weights, saved config, class names) of a freshly built `name`: what
    export and load do with the weights does not depend on their having been trained."""
    cfg = resolve_config(compose_config([f"model={name}", f"data.resolution={resolution}", f"run_dir={path.parent}"]))
    model = create_model(name, num_classes=10, **cfg.model.kwargs).eval()
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "trainer_config": OmegaConf.to_container(cfg, resolve=True),
        "class_names": [str(d) for d in range(10)],
    }
    torch.save(checkpoint, path)
    return model


@pytest.fixture(scope="module")
def alexnet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An architecture written here (not in timm): the paper's AlexNet at 64 px."""
    path = tmp_path_factory.mktemp("alexnet") / "last.ckpt"
    _untrained_checkpoint("alexnet", 64, path)
    return path


def _reference_logits(ckpt: Path, x: torch.Tensor) -> torch.Tensor:
    model, _ = rebuild(read_checkpoint(ckpt))
    with torch.no_grad():
        return model(x)


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd or ROOT
    )


@pytest.mark.integration
@pytest.mark.slow
def test_export_writes_a_timm_folder_with_ema_weights(resnet_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    result = export(resnet_ckpt, out)
    assert result.weights == "ema" and result.architecture == "resnet18"
    expected = {"model.safetensors", "config.json", "README.md", "train_config.yaml", "results.json"}
    assert expected | {"training_curves.png"} == set(result.files)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 10 and config["num_features"] == 512
    assert config["label_names"] == [str(d) for d in range(10)]
    pretrained = config["pretrained_cfg"]
    for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "classifier", "first_conv"):
        assert key in pretrained, key
    assert pretrained["input_size"] == [3, 32, 32] and "tag" not in pretrained  # not timm's own weights' tag
    # weights only, and the EMA ones
    weights = read_state_dict(out / "model.safetensors")
    checkpoint = torch.load(resnet_ckpt, map_location="cpu", weights_only=True)
    ema = {k.removeprefix("ema.module."): v for k, v in checkpoint["state_dict"].items() if k.startswith("ema.module.")}
    assert set(weights) == set(ema) and all(torch.equal(weights[k], ema[k]) for k in ema)
    card = (out / "README.md").read_text()
    for text in (
        "Deep Residual Learning",
        "exponential moving average",
        "GMACs",
        "72.12",
        "training_curves.png",
        'timm.create_model("local-dir:',
        "trainer.hub.load",
        "license: apache-2.0",
        "sample set",
    ):
        assert text in card, text
    assert yaml.safe_load((out / "train_config.yaml").read_text())["model"]["name"] == "resnet18"
    assert json.loads((out / "results.json").read_text())["weights"] == "ema"


@pytest.mark.system
@pytest.mark.slow
def test_timm_loads_a_timm_architecture_without_trainer(resnet_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    export(resnet_ckpt, out)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, timm, torch\n"
        f"m = timm.create_model('local-dir:{out}', pretrained=True).eval()\n"
        "assert not any(n == 'trainer' or n.startswith('trainer.') for n in sys.modules), 'trainer was imported'\n"
        f"with torch.no_grad(): torch.save(m(torch.load('{tmp_path / 'x.pt'}')), '{tmp_path / 'y.pt'}')\n"
    )
    proc = _run("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), _reference_logits(resnet_ckpt, x), atol=1e-5, rtol=0)


@pytest.mark.system
@pytest.mark.slow
def test_own_architecture_loads_through_trainer(alexnet_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "alexnet"
    export(alexnet_ckpt, out)
    assert json.loads((out / "config.json").read_text())["architecture"] == "alexnet"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = load(f"local-dir:{out}")(x)
    torch.testing.assert_close(y, _reference_logits(alexnet_ckpt, x), atol=1e-5, rtol=0)
    assert "import trainer.models" in (out / "README.md").read_text()
    code = f"import timm, trainer.models; timm.create_model('local-dir:{out}', pretrained=True)"
    assert _run("-c", code, cwd=tmp_path).returncode == 0


@pytest.mark.integration
@pytest.mark.slow
def test_export_refuses_bad_input(resnet_ckpt: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.ckpt"
    checkpoint = torch.load(resnet_ckpt, map_location="cpu", weights_only=True)
    torch.save({"state_dict": checkpoint["state_dict"]}, bare)
    with pytest.raises(CheckpointError, match="has no saved config"):
        export(bare, tmp_path / "a")
    (tmp_path / "exists").mkdir()
    with pytest.raises(HubError, match="exists; pass overwrite=true"):
        export(resnet_ckpt, tmp_path / "exists")


@pytest.mark.unit
def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"w": torch.zeros(1), "opts": Path("x")}, path)
    with pytest.raises(CheckpointError, match="holds pickled Python objects .*pathlib"):
        read_state_dict(path)


@pytest.mark.unit
@pytest.mark.parametrize("repo_id", ["name-only", "a/b/c", "/x", "org/", "org/na me"])
def test_repo_id_must_be_org_slash_name(repo_id: str) -> None:
    with pytest.raises(HubError, match="not of the form <org>/<name>"):
        check_repo_id(repo_id)


@pytest.mark.integration
def test_publish_without_a_token_uploads_nothing(resnet_ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored `hf auth login` token
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def no_upload(*args, **kwargs):
        raise AssertionError("tried to reach the Hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_upload)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", no_upload)
    with pytest.raises(HubError, match="set HF_TOKEN or run `hf auth login`; nothing was uploaded"):
        publish(resnet_ckpt, "my-lab/resnet18-digits", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.system
@pytest.mark.slow
def test_publish_dry_run_lists_files_and_never_writes_the_token(resnet_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {"HF_TOKEN": FAKE_TOKEN, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    args = ["scripts/publish.py", f"ckpt={resnet_ckpt}", "repo_id=my-lab/resnet18-digits", "private=true"]
    proc = _run(*args, f"out={out}", "dry_run=true", env=env)
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split()[:2] for line in proc.stdout.splitlines()[1:] if line.startswith("  "))
    sizes = {p.name: str(p.stat().st_size) for p in out.iterdir()}
    assert {k: v for k, v in listed.items() if k != "total"} == sizes
    assert "would upload to my-lab/resnet18-digits (private model repo)" in proc.stdout
    assert "token: found; nothing was uploaded" in proc.stdout and FAKE_TOKEN not in proc.stdout + proc.stderr
    assert "hf-hub:my-lab/resnet18-digits" in (out / "README.md").read_text()
    run_dir = resnet_ckpt.parent.parent
    for path in [*out.rglob("*"), *run_dir.rglob("*")]:
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.system
@pytest.mark.slow
def test_scripts_fail_with_one_line(resnet_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """The first case through a real interpreter (the exit status a shell sees); the others run the script's
    `__main__` in process (runpy), the same code without another torch import."""
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": torch.load(resnet_ckpt, map_location="cpu", weights_only=True)["state_dict"]}, bare)
    proc = _run("scripts/export.py", f"ckpt={bare}", f"out={tmp_path / 'b'}", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "has no saved config" in proc.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for args, message in (
        (["scripts/export.py", f"ckpt={resnet_ckpt}", f"out={tmp_path}"], "exists; pass overwrite=true"),
        (["scripts/publish.py", f"ckpt={resnet_ckpt}", "repo_id=nothing", "dry_run=true"], "not of the form"),
        (["scripts/publish.py", f"ckpt={resnet_ckpt}", "repo=a/b"], "unknown config key 'repo'"),
        (["scripts/publish.py", f"ckpt={resnet_ckpt}", "repo_id=a/b", "--dry-run"], "(e.g. dry_run=true)"),
        (["scripts/export.py", f"ckpt={resnet_ckpt}"], "missing out=..."),
        (["scripts/export.py", f"ckpt={resnet_ckpt}", f"out={tmp_path}", "overwrite=maybe"], "not a valid bool"),
    ):
        code, _, err = run_script(*args, capsys=capsys, monkeypatch=monkeypatch)
        assert code == EXIT_USER_ERROR, err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert message in err


def _smallest_of_each_family() -> list[str]:
    smallest: dict[str, str] = {}
    for name in list_models():
        family = get_entry(name).family
        if family not in smallest or get_entry(name).params < get_entry(smallest[family]).params:
            smallest[family] = name
    return sorted(smallest.values())


@pytest.mark.unit
@pytest.mark.slow
@pytest.mark.parametrize("name", _smallest_of_each_family())
def test_every_family_exports_and_loads(name: str, tmp_path: Path) -> None:
    """A checkpoint as train.py writes it (raw weights, saved config) round-trips, for the smallest entry of every
    catalogue family: export and load go through the family's builder and the entry's saved kwargs, so one
    full-weight round trip per family covers the code path (it was one per entry: 89 exports, 0.5 GB for VGG)."""
    resolution = max(get_entry(name).min_resolution, 64)
    model = _untrained_checkpoint(name, resolution, tmp_path / "last.ckpt")
    export(tmp_path / "last.ckpt", tmp_path / "export")
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # equal_nan: a randomly initialised ResNet-1001 overflows in eval; the export must not change that either
        torch.testing.assert_close(
            load(f"local-dir:{tmp_path / 'export'}")(x), model(x), atol=1e-5, rtol=0, equal_nan=True
        )
