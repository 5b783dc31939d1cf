"""timm's feature APIs for the networks written here, from one description of each network's trunk.

A network lists its trunk as a chain of single-input modules (`trunk()`) and says after which of them a feature
level ends (`feature_ends()`, one per `feature_info` entry). From that list this mixin gives what timm's own models
implement one by one: `forward_intermediates` with timm's meaning of `indices`, `norm`, `stop_early` and
`intermediates_only`, and `set_grad_checkpointing` (each module of the chain is
recomputed in the backward pass). Each network keeps its explicit, scriptable `forward_features`; the tests check
that the chain gives the same output.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import checkpoint


def take_indices(num_levels: int, indices: int | Sequence[int] | None) -> list[int]:
    """timm's reading of `indices`: None all levels, an int n the last n, a sequence those levels (negative from the
    end). Out-of-range values raise a one-line ValueError."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"indices={indices}: the last-n count must be in 1..{num_levels}")
        return list(range(num_levels - indices, num_levels))
    taken = []
    for i in indices:
        if not -num_levels <= i < num_levels:
            raise ValueError(f"indices: {i} is outside the {num_levels} feature levels")
        taken.append(i % num_levels)
    return taken


class StagedModel:
    """A mixin for an `nn.Module` whose trunk is `trunk()` run in order (see the module docstring)."""

    def trunk(self) -> list[nn.Module]:
        """The trunk as single-input modules, in order; running them all is `forward_features`."""
        raise NotImplementedError

    def feature_ends(self) -> list[int]:
        """For each `feature_info` level, the index in `trunk()` of the module that ends it (by default the trunk
        module that `feature_info` names)."""
        trunk = self.trunk()
        named = [self.get_submodule(info["module"]) for info in self.feature_info]  # type: ignore[attr-defined]
        return [next(i for i, m in enumerate(trunk) if m is module) for module in named]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """What `norm=True` applies to the last level (a network with a final norm after its trunk overrides it)."""
        return x

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each trunk module in the backward pass instead of keeping its activations (set
        `self.grad_checkpointing = False` in `__init__`)."""
        self.grad_checkpointing = enable

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # modules without parameters (pools, in-place activations) run as they are: recomputing them saves nothing,
        # and an in-place activation would overwrite the checkpointed input of its own recomputation
        if self.grad_checkpointing and torch.is_grad_enabled() and any(True for _ in module.parameters()):
            return checkpoint(module, x)
        return module(x)

    def run_stages(self, x: torch.Tensor) -> torch.Tensor:
        """`forward_features` through the chain (with gradient checkpointing when it is on)."""
        for module in self.trunk():
            x = self._run(module, x)
        return self.final_norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature levels `indices` (timm's meaning) and, unless `intermediates_only`, the final features.
        `stop_early` stops after the last level taken (the final features are then that level's); `norm` applies
        the network's final norm to the last level (the identity where there is none)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: these networks give NCHW maps only")
        ends = self.feature_ends()
        taken = take_indices(len(ends), indices)
        stop = ends[max(taken)] if stop_early or intermediates_only else len(self.trunk()) - 1
        wanted = {ends[i]: i for i in taken}
        found: dict[int, torch.Tensor] = {}
        for position, module in enumerate(self.trunk()[: stop + 1]):
            x = self._run(module, x)
            if position in wanted:
                level = wanted[position]
                found[level] = self.final_norm(x) if norm and level == len(ends) - 1 else x
        intermediates = [found[i] for i in taken]
        if intermediates_only:
            return intermediates
        if stop == len(self.trunk()) - 1:
            x = self.final_norm(x)
        return x, intermediates


class PooledLinearHead:
    """timm's classifier API for a network whose head is `global_pool` (a `SelectAdaptivePool2d`) then a linear `fc`
    on `num_features` channels: `get_classifier`, `reset_classifier` (classes and pooling), `forward_head`,
    `forward` (the network gives `forward_features`)."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()  # type: ignore[attr-defined]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))  # type: ignore[attr-defined]
