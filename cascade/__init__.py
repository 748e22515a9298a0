"""cascade: phased ranking (retrievers, fusion, re-ranking stages) declared per index."""

from cascade.config import IndexConfig, load_config, load_config_file
from cascade.controller import Cascade, SearchResult
from cascade.query import Query

__all__ = ["Cascade", "IndexConfig", "Query", "SearchResult", "load_config", "load_config_file"]
__version__ = "0.1.0"
