"""Shared layers that timm does not already provide."""

from trainer.models.layers.channel_shuffle import ChannelShuffle
from trainer.models.layers.drop_path import BatchDropPath
from trainer.models.layers.lrn import LocalResponseNorm

__all__ = ["BatchDropPath", "ChannelShuffle", "LocalResponseNorm"]
