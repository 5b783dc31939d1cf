"""Hydra sweeper plugin `hydra/sweeper=trainer` (discovered by Hydra's scan of the `hydra_plugins` namespace)."""
