"""trainer: train, evaluate and publish the classic CNN backbones the way their papers did."""

__version__ = "0.1.0"
