"""The OpenSearch backend: an existing cluster as cascade's retrievers and document source.

``queries`` and ``mapping`` build request bodies (pure), ``responses`` reads
answers (pure), ``client`` sends requests with retries and clear errors,
``backend`` is what the controller uses, ``admin`` creates and loads indexes.
"""

from connectors.opensearch.backend import OpenSearchBackend, OpenSearchRetriever

__all__ = ["OpenSearchBackend", "OpenSearchRetriever"]
