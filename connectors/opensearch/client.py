"""One place that talks to the cluster: client construction, retries with backoff, and errors a person can act on.

Every request goes through :meth:`Cluster.call`, so a timeout always names the
hosts and the limit, a missing index always names the index, and a rejected
request always carries the cluster's own reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from typing import Any, Awaitable, Callable, TypeVar

from cascade.config import OpenSearchBackendConfig
from cascade.errors import BackendError, ConfigError
from connectors.opensearch.responses import error_reason, error_type, missing_index

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def make_client(b: OpenSearchBackendConfig, config_file: str):
    """An ``AsyncOpenSearch`` with cascade's own retry loop (the transport's retries have no backoff)."""
    from opensearchpy import AsyncHttpConnection, AsyncOpenSearch

    kwargs: dict[str, Any] = dict(
        hosts=list(b.hosts), timeout=b.timeout_s, max_retries=0, retry_on_timeout=False,
        verify_certs=b.verify_certs, ssl_show_warn=False, connection_class=AsyncHttpConnection,
    )
    if b.ca_certs:
        kwargs["ca_certs"] = b.ca_certs
    if b.username is not None:
        password = os.environ.get(b.password_env or "")
        if not password:
            raise ConfigError(config_file, "backend.password_env",
                              f"environment variable {b.password_env} is not set (it holds {b.username}'s password)")
        kwargs["http_auth"] = (b.username, password)
    elif b.api_key_env is not None:
        key = os.environ.get(b.api_key_env)
        if not key:
            raise ConfigError(config_file, "backend.api_key_env", f"environment variable {b.api_key_env} is not set")
        kwargs["headers"] = {"Authorization": f"ApiKey {key}"}
    elif b.aws is not None:
        try:
            import boto3
        except ImportError:
            raise ConfigError(config_file, "backend.aws",
                              "AWS SigV4 signing needs boto3, which is not installed: pip install boto3") from None
        from opensearchpy import AWSV4SignerAsyncAuth

        creds = boto3.Session().get_credentials()
        if creds is None:
            raise ConfigError(config_file, "backend.aws", "boto3 found no AWS credentials "
                              "(environment variables, ~/.aws, or an instance role)")
        kwargs["http_auth"] = AWSV4SignerAsyncAuth(creds, b.aws.region, b.aws.service)
    return AsyncOpenSearch(**kwargs)


async def _close_at_loop_end(client) -> Any:
    """An async generator whose ``finally`` runs when the loop shuts its generators down (asyncio.run does).

    aiohttp sessions belong to one event loop; closing them as that loop ends
    keeps a CLI run or a test from leaving an "unclosed session" behind.
    """
    try:
        yield
    finally:
        await client.close()


class Cluster:
    """The cluster a backend config names, with a client per event loop."""

    def __init__(self, backend: OpenSearchBackendConfig, config_file: str):
        self.b, self.config_file = backend, config_file
        self.hosts = ", ".join(backend.hosts)
        self._client = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer = None

    async def client(self):
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = make_client(self.b, self.config_file), loop
            self._closer = _close_at_loop_end(self._client)
            await self._closer.__anext__()
        return self._client

    async def close(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.close()
            self._client = None

    async def call(self, what: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run one request: retry 429 and 5xx answers with doubling backoff, turn failures into BackendError."""
        from opensearchpy.exceptions import ConnectionError, ConnectionTimeout, TransportError

        attempt = 0
        while True:
            client = await self.client()
            try:
                return await fn(client)
            except ConnectionTimeout:
                raise BackendError(f"OpenSearch at {self.hosts} did not answer {what} within the "
                                   f"{self.b.timeout_s:g} s timeout (backend.timeout_s)") from None
            except ConnectionError as exc:
                cause = exc.info if isinstance(exc.info, BaseException) else exc.error
                raise BackendError(f"cannot connect to OpenSearch at {self.hosts} (timeout {self.b.timeout_s:g} s): "
                                   f"{cause}") from None
            except TransportError as exc:
                status = exc.status_code if isinstance(exc.status_code, int) else None
                if status in RETRY_STATUS and attempt < self.b.max_retries:
                    delay = self.b.retry_backoff_s * (2 ** attempt)
                    log.warning("OpenSearch answered %s to %s; retry %d/%d in %.2f s",
                                status, what, attempt + 1, self.b.max_retries, delay)
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                raise self.error(exc.info if exc.info is not None else exc.error, status, what) from None

    def error(self, body: Any, status: int | None, what: str) -> BackendError:
        idx = missing_index(body)
        if idx is not None:
            return BackendError(f"index {idx!r} does not exist in the OpenSearch cluster at {self.hosts}; "
                                f"create and load it with `cascade index --backend opensearch`, or set "
                                f"backend.index to an existing index", status, "index_not_found_exception")
        reason = error_reason(body)
        if status == 401:
            who = f"user {self.b.username!r} (password from ${self.b.password_env})" if self.b.username else "no credentials"
            return BackendError(f"OpenSearch at {self.hosts} refused {what} with 401 ({who}): {reason}", status, "auth")
        if status == 403:
            return BackendError(f"OpenSearch at {self.hosts} does not allow {what} (403): {reason}", status, "auth")
        return BackendError(f"OpenSearch rejected {what} ({status}): {reason}", status, error_type(body))


def run_sync(make_coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop (a server's start-up).

    It runs on a worker thread with its own loop, so the caller's loop (if
    any) is neither blocked by ``asyncio.run`` rules nor handed a client bound
    to another loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade-opensearch") as ex:
        return ex.submit(lambda: asyncio.run(make_coro())).result()
