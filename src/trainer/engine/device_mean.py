"""A running mean kept on the device of its values, so adding to it never waits for the device."""

from __future__ import annotations

import torch


class DeviceMean:
    """Weighted mean of scalar tensors: the sum stays on their device, the weights are Python numbers."""

    def __init__(self) -> None:
        self._sum: torch.Tensor | None = None
        self._weight = 0.0

    def add(self, value: torch.Tensor, weight: float = 1.0) -> None:
        weighted = value.detach().float() * weight
        self._sum = weighted if self._sum is None else self._sum.to(weighted.device) + weighted
        self._weight += weight

    @property
    def count(self) -> float:
        """The total weight added since the last pop."""
        return self._weight

    def pop(self) -> torch.Tensor:
        """The mean so far (a tensor on the values' device) and a fresh start."""
        if self._sum is None:
            raise ValueError("DeviceMean.pop() before any add()")
        mean = self._sum / self._weight
        self._sum, self._weight = None, 0.0
        return mean

    def state_dict(self) -> dict:
        """The running sum and weight (kept in step checkpoints: a resumed epoch's mean is the uninterrupted one)."""
        return {"sum": None if self._sum is None else self._sum.detach().cpu(), "weight": self._weight}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:  # add() moves it
        self._sum = None if state["sum"] is None else state["sum"].to(device)
        self._weight = float(state["weight"])

    def reset(self) -> None:
        self._sum, self._weight = None, 0.0
