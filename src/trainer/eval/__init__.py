"""Test-time evaluation protocols (centre crop, 10-crop, dense multi-scale, GoogLeNet's 144 crops)."""

from trainer.eval.fully_conv import FullyConvolutional, fully_convolutional
from trainer.eval.protocols import PROTOCOLS, Protocol, predict, score_scales, score_views
from trainer.eval.views import googlenet_crops, ten_crop

__all__ = [
    "PROTOCOLS",
    "FullyConvolutional",
    "Protocol",
    "fully_convolutional",
    "googlenet_crops",
    "predict",
    "score_scales",
    "score_views",
    "ten_crop",
]
