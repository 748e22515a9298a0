"""Where a feature set's values come from, recorded with every feature log and model.

Two feature sets can have the same names and different values: keyword
features computed by the embedded index or by an OpenSearch cluster
(``FeatureExtractor.keyword_source``), or over terms of another analyzer. A
model records both and the LTR stage refuses it where they differ.
"""

from __future__ import annotations

from typing import Any


def keyword_analyzers(cfg: Any, names: list[str]) -> dict[str, str]:
    """The analyzer of each field with keyword features (``kw.FIELD.*``), as the index declares it: a model
    trained on terms one analyzer made is refused where another makes them."""
    fields = sorted({n.split(".")[1] for n in names if n.startswith("kw.") and n.count(".") >= 2})
    return {f: cfg.fields[f].analyzer for f in fields if f in cfg.fields}
