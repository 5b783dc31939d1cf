"""Shared layers that timm does not already provide."""

from trainer.models.layers.lrn import LocalResponseNorm

__all__ = ["LocalResponseNorm"]
