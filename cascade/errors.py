"""Errors that carry enough context for a person to fix the input.

Every error raised for bad input names the thing that is wrong (a field, a
file and key, a corpus line) so the CLI and the HTTP service can show it as is.
"""

from __future__ import annotations


class CascadeError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class ConfigError(CascadeError):
    """A cascade config file or a setting is invalid.

    ``file`` and ``key`` locate the problem; ``reason`` explains it.
    """

    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = file, key, reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


class QueryError(CascadeError):
    """A query is malformed; ``field`` names the offending part (``text``, ``filters.year``)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class CorpusError(CascadeError):
    """A corpus line could not be ingested; ``line`` is 1-based."""

    def __init__(self, path: str, line: int, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}")


class DatasetError(CascadeError):
    """A dataset (queries, qrels, corpus) is missing or cannot be read."""


class IndexNotFound(CascadeError):
    """The named index has not been built (or its files are gone)."""

    def __init__(self, name: str, where: str):
        self.name = name
        super().__init__(
            f"index {name!r} not found under {where}; build it with `cascade index --dataset {name}` "
            f"or `cascade index --corpus FILE --index {name}`"
        )


class ModelNotFound(CascadeError):
    """A model name resolves neither to a local path nor to a reachable hub model."""


class BackendError(CascadeError):
    """A search backend refused or failed a request; the message carries the backend's own reason.

    ``status`` is the HTTP status when there was one (None for a connection
    failure or a timeout), so callers can tell a bad request from an outage.
    """

    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        self.status, self.kind = status, kind
        super().__init__(message)


class OverrideError(CascadeError):
    """A per-request override asks for something the cascade does not allow; ``field`` names it.

    ``kind`` says which rule: ``unknown_step``, ``not_overridable`` or ``above_config``
    (``limit`` then carries the bound).
    """

    def __init__(self, field: str, message: str, kind: str, limit: int | None = None):
        self.field, self.message, self.kind, self.limit = field, message, kind, limit
        super().__init__(f"{field}: {message}")


class UnknownProfile(CascadeError):
    """A request or command names a rank profile the index does not declare."""

    def __init__(self, index: str, profile: str, have: list[str]):
        self.index, self.profile, self.have = index, profile, have
        super().__init__(f"index {index} has no rank profile {profile!r}; its profiles: {', '.join(have)}")


class AllRetrieversFailed(CascadeError):
    """Every retriever of a search failed: nothing to rank (the backend, not the request, is at fault)."""
