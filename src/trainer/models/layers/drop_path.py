"""Stochastic depth in the form of Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016
(arXiv 1603.09382).

timm's `DropPath` drops the residual branch per sample and rescales the kept samples by 1/p in training. The paper
(Sec. 3) instead keeps or drops a residual block for the whole mini-batch, with survival probability p_l, does not
rescale in training, and at test time scales the branch by p_l (Eq. 5: H_l = ReLU(p_l f_l(H_{l-1}) + id)).
"""

import torch
import torch.nn as nn


class BatchDropPath(nn.Module):
    """The paper's stochastic depth on a residual branch: the whole batch keeps the branch with `survival_prob`.

    Placed where timm places `DropPath` (on the branch, before the addition of the shortcut).
    """

    def __init__(self, survival_prob: float = 1.0) -> None:
        super().__init__()
        self.survival_prob = survival_prob

    @property
    def drop_prob(self) -> float:
        """The rate in timm's terms (1 - survival_prob), so code that sets `drop_prob` works on both layers."""
        return 1.0 - self.survival_prob

    @drop_prob.setter
    def drop_prob(self, rate: float) -> None:
        self.survival_prob = 1.0 - rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.survival_prob >= 1.0:
            return x
        if not self.training:
            return x * self.survival_prob  # Eq. 5: the expected branch at test time
        # one draw for the batch, on the host: the branch is there for every sample or for none (no rescaling).
        # A dropped branch is multiplied by 0 rather than replaced, so its parameters still get (zero) gradients
        # and DDP sees every parameter used.
        return x if torch.rand(()).item() < self.survival_prob else x * 0.0

    def extra_repr(self) -> str:
        return f"survival_prob={self.survival_prob:.3f}"
