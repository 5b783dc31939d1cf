"""What the root entry points share: config registration, checking overrides before Hydra composes them, and
turning user errors into one line (`error: ...`, exit status 2) instead of a traceback."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import timm
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from trainer.compat import get_args_parser
from trainer.config import MOVED_KEYS, register_configs
from trainer.engine.distributed import process_rank
from trainer.engine.run_dir import complete_message
from trainer.errors import ConfigError, UserError, close_matches
from trainer.models import TIMM_PREFIX, list_models

EXIT_USER_ERROR = 2


def fail(error: UserError | str) -> None:
    message = error.one_line() if isinstance(error, UserError) else str(error)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Run a task; a UserError (ours, or one re-raised by a DataLoader worker) becomes one line and exit 2."""
    try:
        yield
    except UserError as e:
        fail(e)


def prepare(
    config_dir: str | Path, config_name: str, argv: Sequence[str] | None = None, check_run_dir: bool = False
) -> None:
    """Register the model options and check the command line's overrides; a bad one exits with one line.
    `check_run_dir` (train.py): a run_dir holding another run is refused now, before Hydra writes `.hydra/` there."""
    args = list(sys.argv[1:] if argv is None else argv)
    known, unknown = get_args_parser().parse_known_args(args)
    register_configs()
    if known.help or known.hydra_help or known.info or known.shell_completion:
        return
    with user_errors():
        flags = [arg for arg in unknown if arg.startswith("-")]
        if flags:  # Hydra's own answer is its usage text
            key = flags[0].lstrip("-").split("=")[0].replace("-", "_")
            raise ConfigError(f"unknown option '{flags[0]}'; options are key=value (e.g. {key}=true)")
        cfg = check_overrides(Path(config_dir), config_name, known.overrides or [])
        if not known.multirun:  # a sweep may set them (-m ckpt=a,b)
            check_required(cfg)
        if check_run_dir and not known.multirun and process_rank() == 0:  # sweep jobs: train() checks each
            from trainer.train import check_run_dir as settle_run_dir  # Lightning is imported only for training

            finished = settle_run_dir(cfg, Path(cfg.run_dir))[1]
            if finished:  # resume=auto on a finished run: say so and leave its directory untouched (.hydra/ too)
                print(complete_message(Path(cfg.run_dir), finished, cfg.trainer.get("max_epochs")), flush=True)
                sys.exit(0)


def check_required(cfg: DictConfig) -> None:
    """The top-level `???` keys (evaluate.py's ckpt, export.py's ckpt and out) the command line left unset, in one
    line."""
    missing = [f"{key}=..." for key in cfg if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}")


def _group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(loader.get_group_options(group))


def _missing_option(error: MissingConfigException) -> ConfigError:
    path = (error.missing_cfg_file or "").removesuffix(".yaml")
    group, _, option = path.partition("/")
    if not option:  # the primary config itself
        return ConfigError(str(error).splitlines()[0])
    if group == "model" and option.startswith(TIMM_PREFIX):
        name = option[len(TIMM_PREFIX) :]
        return ConfigError(
            f"unknown timm model '{name}'; closest timm names: {close_matches(name, timm.list_models())}"
        )
    choices = list_models() if group == "model" else _group_options(group)
    hint = " (any timm model: model=timm/<name>)" if group == "model" else ""
    return ConfigError(f"unknown {group} '{option}'; closest: {close_matches(option, choices)}{hint}")


def _unknown_key(error: ConfigCompositionException, config_name: str, overrides: list[str]) -> ConfigError:
    first = str(error).splitlines()[0]
    match = re.search(r"Could not (?:override|append to) '([^']+)'", first)
    if not match:  # a value of the wrong type (overwrite=maybe): say which
        cause = str(error.__cause__ or "").splitlines()
        return ConfigError(f"{first}: {cause[0]}" if cause else first)
    overridden = match.group(1)
    key = overridden
    # a dict value ({a: 1}) fails on its inner key: name that one (full_key in the cause)
    inner = re.search(r"full_key: (\S+)", str(error.__cause__ or ""))
    if inner and inner.group(1).startswith(overridden + "."):
        key = inner.group(1)
    if key in MOVED_KEYS:
        return ConfigError(f"'{key}' is now '{MOVED_KEYS[key]}' (the augmentation keys are the augment group's)")
    parent = key.rpartition(".")[0]
    base = compose(config_name, overrides=[o for o in overrides if not o.lstrip("+~").startswith(overridden)])
    node = OmegaConf.select(base, parent) if parent else base
    siblings = [f"{parent}.{k}" if parent else str(k) for k in node] if OmegaConf.is_dict(node) else []
    return ConfigError(
        f"unknown config key '{key}' (add a new key with +{key}=...); closest: {close_matches(key, siblings)}"
    )


def check_overrides(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    """Compose the config once, as Hydra will, and report the first bad override in one line; returns the config
    composed from the overrides that are not sweeps."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"cannot parse the overrides: {str(e).splitlines()[0]}") from None
    # sweeps (-m a=1,2) are checked option by option: every value of a group sweep must exist
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = [(o.key_or_group, v) for o in parsed if o.is_sweep_override() for v in o.sweep_string_iterator()]
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        try:
            cfg = compose(config_name, overrides=plain)
            for key, value in sweeps:
                compose(config_name, overrides=[*plain, f"{key}={value}"])
        except MissingConfigException as e:
            raise _missing_option(e) from None
        except ConfigCompositionException as e:
            raise _unknown_key(e, config_name, plain) from None
    return cfg
