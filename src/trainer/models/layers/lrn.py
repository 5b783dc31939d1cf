"""Local response normalisation as written in Krizhevsky et al. 2012, Sec. 3.3.

    b[i] = a[i] / (k + alpha * sum_{j in window of n around i} a[j]^2) ^ beta

torch.nn.LocalResponseNorm divides alpha by n (the Caffe convention); the paper does not. This layer takes the
paper's alpha and passes alpha * n to torch, so `LocalResponseNorm(n=5, alpha=1e-4, beta=0.75, k=2)` is the paper's.
"""

import torch
import torch.nn as nn


class LocalResponseNorm(nn.Module):
    def __init__(self, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__()
        self.n, self.alpha, self.beta, self.k = n, alpha, beta, k
        self.lrn = nn.LocalResponseNorm(size=n, alpha=alpha * n, beta=beta, k=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrn(x)

    def extra_repr(self) -> str:
        return f"n={self.n}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
