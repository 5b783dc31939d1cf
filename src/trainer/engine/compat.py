"""Messages from Lightning and torch that no setting of ours can change, silenced one by one, each named exactly
(never a category or a module wholesale). Written against lightning 2.6 and torch 2.14; a message that changes
wording in a later version simply shows again.

- Lightning's "Tip: ... litlogger" at every Trainer construction (an advertisement; no logger of ours is missing);
- Lightning's "`srun` is available ... but is not used", raised wherever SLURM's client is installed, for local runs
  too (SLURM jobs go through slurm/train.sbatch, which uses srun);
- "`isinstance(treespec, LeafSpec)` is deprecated": torch 2.14 about Lightning 2.6's own pytree helper;
- "Checkpoint directory ... exists and is not empty" when resuming, where it is expected (a fresh run in a
  non-empty run directory is refused before this point: engine/run_dir.py).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
NOISE = (
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)
RESUME_NOISE = (r"Checkpoint directory .* exists and is not empty",)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _drop_litlogger_tip() -> None:
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(LITLOGGER_TIP))


@contextlib.contextmanager
def quiet_known_noise(resuming: bool = False) -> Iterator[None]:
    """Within: the messages above are not shown (the resume one only when `resuming`)."""
    _drop_litlogger_tip()
    with warnings.catch_warnings():
        for message in (*NOISE, *(RESUME_NOISE if resuming else ())):
            warnings.filterwarnings("ignore", message=message)
        yield
