"""The one way every command writes a chart, so that each plot function ends the same way: laid out, its folder
made, written, and its figure closed (matplotlib keeps open figures alive, which a long-running service or a
benchmark drawing many charts would otherwise accumulate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (its folder created) and close it; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
