"""User-facing errors.

A `UserError` is caused by what the user asked for (a config value, a data folder, a checkpoint), not by a bug.
The entry points print it as one line, ``error: <message>``, and exit with status 2; no traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user. The message names the thing that is wrong, in one line."""

    def one_line(self) -> str:
        text = str(self).strip()
        # DataLoader workers re-raise our errors with the worker traceback folded into the message;
        # the last line is the original message ("trainer.errors.DataError: ...").
        if "Traceback" in text:
            last = text.splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        return " ".join(text.split())


class ConfigError(UserError):
    """A configuration value or name is wrong."""


class InputSizeError(ConfigError, RuntimeError):
    """An input smaller than the model accepts (a RuntimeError too: it is raised from the forward pass)."""


class DataError(UserError):
    """A data folder or file is missing, malformed or unreadable."""


class CheckpointError(UserError):
    """A checkpoint is missing or does not match what was requested."""


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite (loss.nonfinite): the run stopped, its last checkpoint kept."""


class RunDirLockedError(UserError):
    """Another live run holds the run directory's lock."""


def close_matches(name: str, choices: Iterable[str], n: int = 5) -> str:
    """', '-joined close matches of `name` in `choices` (for 'did you mean' messages)."""
    choices = list(choices)
    matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not matches:
        matches = [c for c in choices if name.lower() in c.lower()][:n]
    return ", ".join(matches) if matches else "none"
