"""Text hygiene shared by every path: query normalization and cleaning of untrusted document text.

The service, the CLI, evaluation and feature logging all normalize a query the
same way (``Cascade.validate`` calls :func:`normalize_query`), so a cached
answer, an evaluated ranking and a logged feature row all saw the same text.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_WS = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def normalize_query(text: str) -> str:
    """Same query, same ranking and cache key: Unicode NFKC and runs of whitespace collapsed. Case is kept."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def clean_text(text: Any, max_chars: int | None = None) -> str:
    """A printable, encodable string: None becomes "", NUL and control characters become spaces,
    lone surrogates (undecodable bytes that slipped through as ``surrogateescape``) become U+FFFD."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if max_chars is not None and len(text) > max_chars:
        text = text[:max_chars]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub("\ufffd", text)
    return _CONTROL.sub(" ", text)
