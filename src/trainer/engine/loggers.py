"""A CSV logger that keeps the history of a resumed run.

Lightning's CSVLogger deletes an existing metrics.csv when it starts in a non-empty directory, so resuming a run
in its own directory would erase the curves so far. This one appends instead, after dropping the rows logged
past the step the run resumes from (a killed run may have logged steps its last checkpoint never saw).
"""

from __future__ import annotations

import csv
import logging

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        pass  # keep the previous metrics.csv

    def truncate_after(self, step: int) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = [r for r in reader if not r.get("step") or int(r["step"]) < step]
        with self._fs.open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = list(fields)


class ResumableCSVLogger(CSVLogger):
    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def truncate_after(self, step: int) -> None:
        """Drop rows logged at or after `step` (called when a run resumes from a checkpoint at that step)."""
        if self._experiment is None and not self._fs.isfile(f"{self.log_dir}/metrics.csv"):
            return
        self.experiment.truncate_after(step)


def announce(message: str) -> None:
    """A run's summary line: printed to stdout, and into the run's log file (<run_dir>/train.log or the run's
    evaluate.log, conf/hydra/job_logging/run_log.yaml) when Hydra set one up."""
    print(message, flush=True)
    logging.getLogger("trainer.summary").info(message)
