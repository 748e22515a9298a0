"""Protocols that backends implement (see ``connectors/``): retrievers and a document source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cascade.candidates import Hit

if TYPE_CHECKING:
    from cascade.query import Query


@runtime_checkable
class Retriever(Protocol):
    """Produces the first candidates for a query: BM25, kNN, or anything that returns scored ids."""

    name: str

    async def retrieve(self, query: "Query", k: int) -> list[Hit]: ...


@runtime_checkable
class DocumentSource(Protocol):
    """Fetches stored fields for candidates a retriever returned without them (kNN hits, say)."""

    async def fetch(self, ids: list[str]) -> list[dict[str, Any] | None]: ...


@runtime_checkable
class MultiRetriever(Protocol):
    """A backend that answers several of its retrievers in one round trip (OpenSearch's ``_msearch``).

    The controller prefers this over one call per retriever when the backend
    offers it. A value that is an exception rather than a list means that
    retriever alone failed; the others' hits are still used.
    """

    async def retrieve_many(self, query: "Query", ks: dict[str, int]) -> dict[str, "list[Hit] | BaseException"]: ...
