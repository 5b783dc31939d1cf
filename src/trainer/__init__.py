"""trainer: train, evaluate and publish the classic CNN backbones the way their papers did.

Importing the package registers the catalogue's own networks in timm's registry, so `timm.create_model(name)`
builds them after `import trainer`.
"""

from trainer import models  # noqa: F401  (registers our networks in timm)

__version__ = "0.1.0"
