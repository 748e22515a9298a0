"""Process-wide settings read from the environment (``CASCADE_`` prefix).

Per-index behaviour lives in the cascade YAML files; these settings only say
where things are on this machine, so the same config works everywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _user_dir(kind: str) -> Path:
    base = {"data": Path.home() / ".local" / "share", "cache": Path.home() / ".cache"}[kind]
    return base / "cascade"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CASCADE_", extra="ignore")

    data_dir: Path | None = Field(
        default=None,
        description="Folder of BEIR-format datasets (one sub-folder per dataset). "
        "Unset: public BEIR archives are downloaded into cache_dir/datasets.",
    )
    models_dir: Path | None = Field(
        default=None, description="Folder of local models; a model name is looked up here first."
    )
    index_dir: Path = Field(
        default_factory=lambda: _user_dir("data") / "indexes",
        description="Where the embedded backend persists its indexes.",
    )
    trained_dir: Path = Field(
        default_factory=lambda: _user_dir("data") / "models",
        description="Where `cascade train` writes models; a stage's model name is looked up here too.",
    )
    config_dir: Path = Field(
        default=Path("configs"),
        description="Folder of per-index cascade YAML files (NAME.yaml); built-in configs are the fallback.",
    )
    cache_dir: Path = Field(default_factory=lambda: _user_dir("cache"), description="Downloads.")
    beir_url: str = Field(
        default="https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets",
        description="Base URL of the public BEIR archives (NAME.zip).",
    )
    torch_threads: int | None = Field(default=None, description="torch intra-op threads (default: torch's own).")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
