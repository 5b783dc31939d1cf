"""`model=timm/<name>` for any timm model, wherever Hydra composes a config: the command line, a recipe's or sweep
file's defaults list, a sweep's values, and `hydra.compose` (tests, notebooks).

A config source on Hydra's search path answers for the group `model/timm` on demand: an option exists when
`timm.is_model(name)` says so and is built when it is chosen, so no start pays for storing all ~1,300 timm names.
Catalogue models (`model=<name>`) stay in the ConfigStore (trainer.config.register_configs).

trainer and timm are imported lazily, because Hydra imports every plugin module of every application at start-up.
"""

# no `from __future__ import annotations`: Hydra's plugin scan executes this module outside sys.modules
from typing import List, Optional  # noqa: UP035

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

SCHEME = "trainer-timm"
GROUP = "model/timm"


def _timm_name(config_path: str) -> Optional[str]:  # noqa: UP045
    """`model/timm/<name>` -> `<name>`, for a timm model only."""
    path = config_path.removesuffix(".yaml")
    if not path.startswith(GROUP + "/"):
        return None
    import timm

    name = path[len(GROUP) + 1 :]
    return name if timm.is_model(name) else None


class TimmModels(ConfigSource):
    """The `model/timm` group: one `ModelConfig(name="timm/<name>")` in package `model` per timm model."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def load_config(self, config_path: str) -> ConfigResult:
        from omegaconf import OmegaConf

        from trainer.config import ModelConfig
        from trainer.models import TIMM_PREFIX

        name = _timm_name(config_path)
        assert name is not None, config_path  # Hydra loads only what is_config accepted
        return ConfigResult(
            config=OmegaConf.structured(ModelConfig(name=TIMM_PREFIX + name)),
            path=f"{SCHEME}://{self.path}",
            provider=self.provider,
            header={"package": "model"},
        )

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.rstrip("/") in ("model", GROUP)

    def is_config(self, config_path: str) -> bool:
        return _timm_name(config_path) is not None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:  # noqa: UP006, UP045
        # not enumerated: `--help` would print all ~1,300 names (timm.list_models() has them)
        return []


class TimmModelsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="trainer", path=f"{SCHEME}://")
