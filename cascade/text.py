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
# A JSON escape of a surrogate (a cheap test before looking for a lone one in the parsed value).
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
LONE_SURROGATE = "a lone surrogate escape (\\ud800-\\udfff without its pair) is not text"


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


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or key) holding a lone surrogate, or None.

    Python's JSON parser accepts an escape like ``"\\ud800"`` without its pair;
    nothing can encode the result as UTF-8, so it is refused where it enters
    (a corpus line, a request body) with the place it was found.
    """
    if isinstance(value, str):
        return path or "(value)" if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SURROGATE.search(k):
                return f"{path + '.' if path else ''}(a key)"
            bad = lone_surrogate(v, sub)
            if bad:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = lone_surrogate(v, f"{path}.{i}" if path else str(i))
            if bad:
                return bad
    return None


# An absolute POSIX path (not a URL's path: nothing word-like, ':' or '/' right before it).
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s'\"`:;,()\[\]{}<>/]+/)*[^\s'\"`:;,()\[\]{}<>/]+/?")


def public_reason(text: str) -> str:
    """``text`` with each absolute path cut to its last part (``.../indexes``): public answers name indexes
    and models, not the server's folders; the full text goes to the log."""
    return _ABS_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def public_value(value: Any) -> Any:
    """A JSON-like value (a config dump, a saved report) as public answers show it: every string holding a path
    cut by :func:`public_reason`."""
    if isinstance(value, dict):
        return {k: public_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public_value(v) for v in value]
    return public_reason(value) if isinstance(value, str) and "/" in value else value


def error_text(exc: BaseException) -> str:
    """An exception as a trace or an answer shows it: its type and message, with server paths cut."""
    return public_reason(f"{type(exc).__name__}: {exc}")
