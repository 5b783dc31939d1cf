"""A CSV logger that keeps the history of a resumed run.

Lightning's CSVLogger deletes an existing metrics.csv when it starts in a non-empty directory, so resuming a run
in its own directory would erase the curves so far. This one appends instead, after dropping the rows logged
past the step the run resumes from (a killed run may have logged steps its last checkpoint never saw).
"""

from __future__ import annotations

import csv
import logging

from lightning.pytorch.loggers import CSVLogger

from trainer.compat import csv_writer_keeping_files, logger_experiment, logger_fs, set_logger_experiment


class _AppendingWriter(csv_writer_keeping_files()):  # keeps the previous metrics.csv
    def truncate_after(self, step: int) -> None:
        if not logger_fs(self).isfile(self.metrics_file_path):
            return
        with logger_fs(self).open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = [r for r in reader if not r.get("step") or int(r["step"]) < step]
        with logger_fs(self).open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = list(fields)


class ResumableCSVLogger(CSVLogger):
    @property
    def experiment(self) -> _AppendingWriter:
        if logger_experiment(self) is None:
            logger_fs(self).makedirs(self.root_dir, exist_ok=True)
            set_logger_experiment(self, _AppendingWriter(log_dir=self.log_dir))
        return logger_experiment(self)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged at or after `step` (called when a run resumes from a checkpoint at that step)."""
        if logger_experiment(self) is None and not logger_fs(self).isfile(f"{self.log_dir}/metrics.csv"):
            return
        self.experiment.truncate_after(step)


def announce(message: str) -> None:
    """A run's summary line: printed to stdout, and into the run's log file (<run_dir>/train.log or the run's
    evaluate.log, conf/hydra/job_logging/run_log.yaml) when Hydra set one up."""
    print(message, flush=True)
    logging.getLogger("trainer.summary").info(message)
