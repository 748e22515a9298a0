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
