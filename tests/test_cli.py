"""Bad input on the command line: one line naming the thing, `error: ...`, exit status 2, no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import CONF_DIR, PYTHON, ROOT
from trainer.cli import EXIT_USER_ERROR, prepare, user_errors
from trainer.train import train

BAD_OVERRIDES = [
    (["model=resnt18"], "unknown model 'resnt18'; closest: resnet18"),
    (["model=timm/resnet10"], "unknown timm model 'resnet10'; closest timm names: resnet10t"),
    (["recipe=resnett"], "unknown recipe 'resnett'; closest: resnet"),
    (["data=imagefolde"], "unknown data 'imagefolde'; closest: imagefolder"),
    (["optim=sgdd"], "unknown optim 'sgdd'; closest: sgd"),
    (["sched=cosin"], "unknown sched 'cosin'; closest: cosine"),
    (["data.foo=1"], "unknown config key 'data.foo'"),
    (
        ["trainer.max_epoch=3"],
        "unknown config key 'trainer.max_epoch' (add a new key with +trainer.max_epoch=...); "
        "closest: trainer.max_epochs",
    ),
    (["model.kwargs={bogus: 1}"], "unknown config key 'model.kwargs.bogus'"),
    (["-m", "model=resnet18,resnet81"], "unknown model 'resnet81'"),
]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.mark.unit
@pytest.mark.parametrize(("argv", "message"), BAD_OVERRIDES, ids=[" ".join(a) for a, _ in BAD_OVERRIDES])
def test_bad_override_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        prepare(CONF_DIR, "train", argv)
    assert exit_info.value.code == EXIT_USER_ERROR
    assert message in _one_line_error(capsys)


@pytest.mark.unit
def test_good_overrides_pass(capsys: pytest.CaptureFixture[str]) -> None:
    prepare(CONF_DIR, "train", ["model=alexnet", "recipe=resnet", "-m", "optim.lr=0.1,0.2", "--cfg", "job"])
    assert capsys.readouterr().err == ""


BAD_RUNS = [
    (["data=imagefolder", "data.root={tmp}/missing"], "data.root '{tmp}/missing' does not exist"),
    (["data=imagefolder", "data.root={tmp}"], "is not in ImageNet layout"),
    (["resume=maybe"], "resume='maybe' is not one of never, auto"),
    (["ckpt_path={tmp}/nope.ckpt"], "ckpt_path '{tmp}/nope.ckpt' does not exist"),
    (["model.init_from={tmp}/nope.pth"], "model.init_from '{tmp}/nope.pth' does not exist"),
    (["data.batch_size=63", "trainer.devices=2", "trainer.strategy=ddp_spawn"], "not divisible"),
    (["optim.lr_scaling=cubic"], "optim.lr_scaling='cubic'"),
    (["optim.step_impl=fast"], "optim.step_impl='fast' is not one of auto, fused, foreach, for_loop"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("overrides", "message"), BAD_RUNS, ids=[" ".join(o) for o, _ in BAD_RUNS])
def test_bad_run_input_is_one_line(overrides, message, tiny_cfg, tmp_path: Path, capsys) -> None:
    cfg = tiny_cfg(*(o.format(tmp=tmp_path) for o in overrides))
    with pytest.raises(SystemExit) as exit_info, user_errors():
        train(cfg)
    assert exit_info.value.code == EXIT_USER_ERROR
    assert message.format(tmp=tmp_path) in _one_line_error(capsys)


@pytest.mark.system
@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("train.py", ["data=imagefolder", "data.root=/no/such/dir"], "data.root '/no/such/dir' does not exist"),
        ("evaluate.py", ["ckpt=/no/such.ckpt"], "ckpt '/no/such.ckpt' does not exist"),
    ],
)
def test_entry_points_exit_with_one_line(script: str, args: list[str], message: str, tmp_path: Path) -> None:
    """Each entry point through a real interpreter, on an error found inside its run (the config errors that
    `prepare` finds before it are checked in process above, with the same exit path)."""
    proc = subprocess.run(
        [PYTHON, str(ROOT / script), *args, f"run_dir={tmp_path}/run", f"paths.cache_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
