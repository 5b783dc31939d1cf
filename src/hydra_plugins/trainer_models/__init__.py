"""Every timm model as a `model=timm/<name>` option (discovered by Hydra's scan of the `hydra_plugins` namespace)."""
