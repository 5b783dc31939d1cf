"""`hydra/sweeper=trainer`: Hydra's cartesian sweep, filtered to EfficientNet's compound-scaling constraint where
asked, that lists its points before it runs and records a crashing point instead of stopping.

Hydra's BasicSweeper runs a cartesian product and stops at the first failed job's result; this one

- expands the same sweep syntax (`hydra.sweeper.params` and `key=a,b,c` on the command line), then, with
  `compound: grid`, keeps only the (sweep.alpha, sweep.beta, sweep.gamma) that satisfy Eq. 3 (trainer.sweeps) and,
  with `compound: grid | scale`, checks every point (phi >= 0, bases >= 1) before anything runs;
- prints the points first, and with `dry_run: true` stops there;
- hands the points to whatever `hydra/launcher` is configured (basic: sequential on this machine; submitit_slurm:
  one SLURM job per point), and wraps the task function so that a point that raises (a SystemExit from a
  UserError included) writes `failed.json` into its job directory; the other points go on, and the sweep ends
  with a summary and exit status 1 when any failed.

The plugin lives in this package (setuptools' namespace-package discovery ships `src/hydra_plugins`); Hydra imports
every plugin module of every application at start-up, so only trainer.compat (Hydra's BasicSweeper, the base class
here) is imported with it (`import trainer`: torch and timm), the rest of trainer lazily.
"""

# no `from __future__ import annotations`: Hydra's plugin scan executes this module outside sys.modules, where
# dataclasses cannot resolve string annotations; and OmegaConf reads Optional[...] (not `X | None`) in the schema.
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import TaskFunction
from omegaconf import DictConfig, OmegaConf

from trainer.compat import BasicSweeper, job_error, sweeper_params

COMPOUND_MODES = (None, "grid", "scale")


@dataclass
class TrainerSweeperConf:
    _target_: str = "hydra_plugins.trainer_sweeper.trainer_sweeper.TrainerSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045  points handed to the launcher at once (null: all)
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045  key: sweep string, as BasicSweeper's
    dry_run: bool = False  # list the points, run none
    compound: Optional[str] = None  # noqa: UP045  # null | grid (filter to Eq. 3, check) | scale (check only)
    target: float = 2.0  # grid: alpha * beta^2 * gamma^2 ~= target ...
    tolerance: float = 0.1  # ... within this (absolute, on the product)


ConfigStore.instance().store(group="hydra/sweeper", name="trainer", node=TrainerSweeperConf, provider="trainer")


class SweepPointError(RuntimeError):
    """A sweep point failed; the message is its one-line error (picklable, so it travels back from SLURM jobs)."""


class RecordFailures:
    """The task function, with a crash recorded in the job's directory and raised as a SweepPointError."""

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        from trainer.sweeps import error_line, write_failure

        try:
            return self.task_function(cfg)
        except (Exception, SystemExit) as e:
            if isinstance(e, SystemExit) and e.code in (0, None):
                return None
            # the entry points turn a UserError into SystemExit(2) inside its except block: report the UserError
            cause = e.__context__ if isinstance(e, SystemExit) and isinstance(e.__context__, Exception) else e
            write_failure(Path(HydraConfig.get().runtime.output_dir), cause)
            raise SweepPointError(error_line(cause)) from None


class TrainerSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        dry_run: bool = False,
        compound: str | None = None,
        target: float = 2.0,
        tolerance: float = 0.1,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.dry_run, self.compound, self.target, self.tolerance = dry_run, compound, target, tolerance
        self.swept: set[str] = set()

    def setup(self, *, hydra_context: Any, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=RecordFailures(task_function), config=config)

    def points(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides: the cartesian product, filtered and checked for compound sweeps."""
        from trainer.errors import ConfigError

        assert self.hydra_context is not None
        if self.compound not in COMPOUND_MODES:
            raise ConfigError(f"hydra.sweeper.compound={self.compound} is not one of null, grid, scale")
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*sweeper_params(self), *arguments])
        self.swept = {o.get_key_element() for o in overrides if o.is_sweep_override()}
        jobs = self.split_arguments(overrides, None)[0]
        if self.compound is None:
            return jobs
        from trainer.sweeps import COMPOUND_KEYS, PHI_KEY, check_constraint, check_point, no_point_error, satisfies

        values = [self._values(job, (PHI_KEY, *COMPOUND_KEYS)) for job in jobs]
        if self.compound == "grid":
            check_constraint(self.target, self.tolerance)
            keep = [satisfies(*v[1:], target=self.target, tolerance=self.tolerance) for v in values]
            if not any(keep):
                raise no_point_error([v[1:] for v in values], self.target, self.tolerance)
            jobs, values = (
                [j for j, k in zip(jobs, keep, strict=True) if k],
                [v for v, k in zip(values, keep, strict=True) if k],
            )
        for v in values:
            check_point(*v)
        return jobs

    def _values(self, job: list[str], keys: tuple[str, ...]) -> tuple[float, ...]:
        """The float value of each key at this point: its override, else the composed config's."""
        from trainer.errors import ConfigError

        given = {}
        for override in job:
            key, _, value = override.partition("=")
            given[key.lstrip("+~")] = value
        out = []
        for key in keys:
            value = given.get(key, OmegaConf.select(self.config, key))
            try:
                out.append(float(value))
            except (TypeError, ValueError):
                raise ConfigError(f"{key}={value} is not a number (a compound sweep needs {', '.join(keys)})") from None
        return tuple(out)

    def sweep(self, arguments: list[str]) -> Any:
        from trainer.cli import fail
        from trainer.errors import UserError

        assert self.config is not None and self.launcher is not None
        try:
            jobs = self.points(arguments)
        except UserError as e:
            fail(e)
        self._print_points(jobs)
        if self.dry_run:
            return []
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        returns: list[list[JobReturn]] = []
        failed: list[tuple[int, str]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = list(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            for num, result in enumerate(results, start=initial_job_idx):
                if result.status == JobStatus.FAILED:
                    failed.append((num, str(job_error(result))))
            initial_job_idx += len(batch)
            returns.append(results)
        report = f"python scripts/sweep_report.py {sweep_dir}"
        if failed:
            lines = "\n".join(f"  #{num}: {error}" for num, error in failed)
            print(f"sweep: {len(failed)} of {len(jobs)} points failed:\n{lines}\nreport: {report}", file=sys.stderr)
            sys.exit(1)
        print(f"sweep: {len(jobs)} points done in {sweep_dir}\nreport: {report}", flush=True)
        return returns

    def _print_points(self, jobs: list[list[str]]) -> None:
        from trainer.sweeps import COMPOUND_KEYS, compound_product

        what = "dry run, nothing runs" if self.dry_run else "in this order"
        print(f"sweep: {len(jobs)} points ({what})", flush=True)
        for num, job in enumerate(jobs):
            line = " ".join(o for o in job if o.partition("=")[0] in self.swept)
            if self.compound == "grid":
                line += f"  (alpha*beta^2*gamma^2 = {compound_product(*self._values(job, COMPOUND_KEYS)):.4f})"
            print(f"  #{num}: {line}", flush=True)
