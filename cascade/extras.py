"""Optional dependencies, imported when a config asks for them, with an error that says what to install.

A service that ranks with a remote reranker on OpenSearch needs neither torch
nor faiss; ``pip install cascade-rank`` gives the core and each extra adds one
kind of part (``make demo`` / ``make test`` install ``[all]``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cascade.errors import CascadeError


class MissingExtra(CascadeError):
    """A config needs a package of an extra that is not installed."""


def require(module: str, extra: str, what: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{what} needs the Python package {module.split('.')[0]!r}, which is not installed: "
                           f"pip install 'cascade-rank[{extra}]' ({type(exc).__name__}: {exc})") from None
