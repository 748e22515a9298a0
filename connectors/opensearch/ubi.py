"""Loading a UBI export (``cascade experiments export-ubi --host``) into an OpenSearch cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cascade.errors import BackendError

BATCH_LINES = 2000  # action + document lines per _bulk request


async def load(out: Path, host: str, mappings: dict[str, dict[str, Any]], *, username: str | None = None,
               password: str | None = None, verify_certs: bool = True) -> dict[str, int]:
    """Create each index with its mapping unless it exists, then ``_bulk`` its file; returns documents loaded.

    A document the cluster refuses is an error naming the index and the cluster's reason.
    """
    from opensearchpy import AsyncHttpConnection, AsyncOpenSearch
    from opensearchpy.exceptions import OpenSearchException, RequestError

    kwargs: dict[str, Any] = dict(hosts=[host], verify_certs=verify_certs, ssl_show_warn=False, timeout=60,
                                  connection_class=AsyncHttpConnection)
    if username is not None:
        kwargs["http_auth"] = (username, password or "")
    client = AsyncOpenSearch(**kwargs)
    loaded: dict[str, int] = {}
    try:
        for name, mapping in mappings.items():
            try:
                if not await client.indices.exists(index=name):
                    await client.indices.create(index=name, body={"mappings": mapping})
            except RequestError as exc:
                if "resource_already_exists" not in str(exc):
                    raise BackendError(f"creating {name} in {host}: {exc}") from None
            lines = (out / f"{name}.ndjson").read_text(encoding="utf-8").splitlines()
            loaded[name] = 0
            for i in range(0, len(lines), BATCH_LINES):
                chunk = lines[i:i + BATCH_LINES]
                resp = await client.bulk(body="\n".join(chunk) + "\n", refresh=False)
                if resp.get("errors"):
                    bad = next(it for it in resp["items"] if next(iter(it.values())).get("error"))
                    err = next(iter(bad.values()))["error"]
                    raise BackendError(f"{host} refused a document of {name}: {err}")
                loaded[name] += len(chunk) // 2
            await client.indices.refresh(index=name)
    except OpenSearchException as exc:
        raise BackendError(f"{host}: {exc}") from None
    finally:
        await client.close()
    return loaded
