"""Backends and model clients. ``open_backend`` picks the backend a config names."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cascade.config import IndexConfig
    from cascade.settings import Settings


def open_backend(config: "IndexConfig", settings: "Settings"):
    from cascade.extras import require

    kind = config.backend.type
    if kind == "embedded":
        require("faiss", "embedded", "the embedded backend")
        from connectors.embedded import EmbeddedBackend

        return EmbeddedBackend(config, settings)
    if kind == "opensearch":
        require("opensearchpy", "opensearch", "the opensearch backend")
        from connectors.opensearch import OpenSearchBackend

        return OpenSearchBackend(config, settings)
    raise ValueError(f"unknown backend {kind!r}")  # unreachable: the config schema allows only known types
