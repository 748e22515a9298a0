"""OpenSearch request bodies against golden files, and parsing of real OpenSearch response shapes.

Nothing here talks to a server: the bodies are what the connector would send,
the responses are documented or recorded OpenSearch answers (see
tests/fixtures/opensearch/README.md for where each comes from).
"""

import json
import os
from pathlib import Path

import pytest

from cascade.config import OpenSearchBackendConfig, parse_config
from cascade.errors import BackendError
from cascade.query import Query, validate_query
from connectors.opensearch import queries as Q
from connectors.opensearch.client import Cluster
from connectors.opensearch.mapping import index_body, mapping_problems
from connectors.opensearch.responses import (bulk_failures, error_reason, missing_index, parse_hits,
                                             parse_termvectors)
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.opensearch
FIXTURES = Path(__file__).parent / "fixtures" / "opensearch"
VECTOR = [0.125, -0.5, 0.25, 1.0]  # a stand-in query vector; the builders only pass it through


def config(**backend):
    data = json.loads(json.dumps(TINY_CONFIG))
    data["backend"] = {"type": "opensearch", **backend}
    data["retrievers"] = {"bm25": {"type": "bm25", "k": 50, "fields": {"title": 2.0, "text": 1.0}},
                          "knn": {"type": "knn", "k": 20}}
    return parse_config(data, "tiny.yaml")


def query(cfg, text="solar panels", **filters):
    return validate_query(Query(text, filters=filters), {n: f.type for n, f in cfg.fields.items()}, 100, 1000)


FILTERS = {"journal": ["Energy", "Chemistry"], "year": {"gte": 2019, "lt": 2022},
           "published": {"gte": "2020-01-01"}, "cites": 12.5}


def golden(name: str, value) -> None:
    path = FIXTURES / "requests" / f"{name}.json"
    text = json.dumps(value, indent=2, sort_keys=False) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"{path} is missing; run with UPDATE_GOLDEN=1 and review it"
    assert json.loads(path.read_text()) == value, f"{name}: the built body differs from {path}"


def test_lexical_body():
    cfg = config()
    b = cfg.backend
    golden("lexical", Q.search_body(Q.lexical_query(query(cfg), cfg.bm25_fields(cfg.retrievers["bm25"]), b), 50,
                                    Q.source_fields(cfg, b)))


def test_lexical_body_with_filters():
    cfg = config(multi_match_type="best_fields")
    b = cfg.backend
    golden("lexical_filters", Q.search_body(
        Q.lexical_query(query(cfg, **FILTERS), cfg.bm25_fields(cfg.retrievers["bm25"]), b), 50, Q.source_fields(cfg, b)))


def test_knn_bodies():
    cfg = config(knn_field="vec")
    b = cfg.backend
    golden("knn", Q.search_body(Q.vector_query(query(cfg), 20, b, VECTOR), 20, Q.source_fields(cfg, b)))
    golden("knn_filters", Q.search_body(Q.vector_query(query(cfg, **FILTERS), 20, b, VECTOR), 20,
                                        Q.source_fields(cfg, b)))
    one = Q.vector_query(query(cfg, journal="Energy"), 20, b, VECTOR)
    assert one["knn"]["vec"]["filter"] == {"term": {"journal": "Energy"}}  # a single clause is not wrapped


def test_neural_body_sends_text_not_a_vector():
    cfg = config(mode="neural", model_id="aVeif4oB5Vm0Tdw8zYO2")
    b = cfg.backend
    body = Q.search_body(Q.vector_query(query(cfg, journal="Energy"), 20, b, None), 20, Q.source_fields(cfg, b))
    golden("neural", body)
    assert "vector" not in json.dumps(body)


def test_hybrid_body():
    from connectors.opensearch.backend import OpenSearchBackend

    cfg = config(hybrid_pipeline="nlp-search-pipeline")
    be = OpenSearchBackend(cfg, None, check=False)
    golden("hybrid", be.hybrid(query(cfg, journal="Energy"), {"bm25": 50, "knn": 20}, VECTOR))


def test_msearch_lines_carry_both_retrievers():
    from connectors.opensearch.backend import OpenSearchBackend

    cfg = config(index="tiny-v2")
    be = OpenSearchBackend(cfg, None, check=False)
    bodies = be.bodies(query(cfg, year={"gte": 2020}), {"bm25": 50, "knn": 20}, VECTOR)
    lines = Q.msearch_lines(be.index, list(bodies.values()))
    golden("msearch", lines)
    assert [line.get("index") for line in lines[::2]] == ["tiny-v2", "tiny-v2"]


def test_field_map_renames_fields_in_queries_and_source():
    cfg = config(field_map={"title": "doc.title", "journal": "venue"})
    b = cfg.backend
    body = Q.search_body(Q.lexical_query(query(cfg, journal="Energy"), cfg.bm25_fields(cfg.retrievers["bm25"]), b),
                         10, Q.source_fields(cfg, b))
    golden("field_map", body)


def test_termvectors_and_index_bodies():
    golden("termvectors", Q.termvectors_body("title", ["solar", "panels"]))
    cfg = config(engine="faiss", shards=1, replicas=0, field_map={"journal": "meta.journal"})
    cfg.fields["text"].analyzer = "standard"
    golden("index_body", index_body(cfg, cfg.backend, 384))


def test_dates_are_iso_strings():
    assert Q.iso_date(0) == "1970-01-01T00:00:00Z"
    assert Q.iso_date(1577836800.5) == "2020-01-01T00:00:00.500Z"


# ---------------------------------------------------------------- responses

def load(name):
    return json.loads((FIXTURES / "responses" / f"{name}.json").read_text())


def test_msearch_hits_parse_ids_scores_and_mapped_source():
    # Map cascade fields onto the documented sample indexes' fields to read their _source.
    cfg = config(field_map={"title": "customer_full_name", "text": "message", "journal": "currency",
                            "year": "order_id", "published": "order_date", "cites": "geo.coordinates.lat"})
    logs, shop = load("msearch_hits")["responses"]
    [h] = parse_hits(logs, cfg, cfg.backend)
    assert h.id == "_fnhBXsBgv2Zxgu9dZ8Y" and h.score == 1.0
    assert h.fields["text"].startswith("213.116.129.196 - -") and h.fields["cites"] == 42.35083333
    assert "title" not in h.fields  # the document has no such field: left out, not None
    [g] = parse_hits(shop, cfg, cfg.backend)
    assert g.fields == {"title": "Gwen Dennis", "journal": "EUR", "year": 576942, "published": "2021-08-10T16:24:58+00:00"}


def test_msearch_item_errors_are_told_apart():
    ok, rejected, gone = load("msearch_item_errors")["responses"]
    assert "error" not in ok and rejected["status"] == 400 and gone["status"] == 404
    # The useful reason is the root cause, not "all shards failed".
    assert error_reason(rejected) == ("parse_exception: failed to parse date field [2019-aaaef-01] with format "
                                      "[strict_date_optional_time||epoch_millis] (Unrecognized chars at the end of "
                                      "[2019-aaaef-01]: [-aaaef-01])")
    assert missing_index(rejected) is None and missing_index(gone) == ".plugins-ml-controller"


def test_error_mapping_names_the_index_and_passes_the_reason_on():
    cluster = Cluster(OpenSearchBackendConfig(hosts=["https://search.example:9200"]), "tiny.yaml")
    e404 = cluster.error(load("index_not_found_404"), 404, "_msearch")
    assert isinstance(e404, BackendError) and e404.status == 404
    assert "'.plugins-ml-controller' does not exist" in str(e404) and "search.example:9200" in str(e404)
    e400 = cluster.error(load("search_phase_execution_exception_400"), 400, "_msearch on 'tiny'")
    assert str(e400).startswith("OpenSearch rejected _msearch on 'tiny' (400): parse_exception: failed to parse date")
    assert "Unrecognized chars" in str(e400)  # the deeper cause is kept too
    assert error_reason("no handler found for uri [/t/_x] and method [POST]").startswith("no handler")


def test_bulk_failures_name_the_documents():
    [f] = bulk_failures(load("bulk_item_errors"))
    assert (f.id, f.status, f.type) == ("nonexistent1", 404, "document_missing_exception")
    assert str(f) == "nonexistent1: 404 document_missing_exception: [nonexistent1]: document missing"
    assert bulk_failures(load("bulk_ok")) == []  # errors: false, although a delete answered 404


def test_termvectors_give_field_statistics():
    st = parse_termvectors(load("termvectors"), "text")
    assert st.doc_count == 1 and st.sum_ttf == 5 and st.avg_length == 5.0
    assert st.doc_freq == {"a": 1, "engine": 1, "is": 1, "opensearch": 1, "search": 1}


def test_mapping_check_names_missing_fields_and_dimensions():
    cfg = config(knn_field="vec", field_map={"journal": "meta.journal"})
    mapping = index_body(cfg, cfg.backend, 384)["mappings"]
    assert mapping_problems({"tiny": {"mappings": mapping}}, cfg, cfg.backend, 384) == ([], None)
    missing, dim = mapping_problems({"tiny": {"mappings": mapping}}, cfg, cfg.backend, 768)
    assert missing == [] and "384-d" in dim and "768-d" in dim
    del mapping["properties"]["year"]
    mapping["properties"]["cites"] = {"type": "keyword"}
    missing, _ = mapping_problems({"tiny": {"mappings": mapping}}, cfg, cfg.backend, 384)
    assert missing == ["year", "cites: mapped as keyword, cascade needs float"]


def test_backend_config_rejects_secrets_and_half_auth():
    from cascade.errors import ConfigError

    for bad, msg in [({"password": "hunter2"}, "never put secrets"), ({"username": "admin"}, "go together"),
                     ({"mode": "neural"}, "needs model_id"), ({"field_map": {"colour": "c"}}, "backend.field_map.colour"),
                     ({"username": "a", "password_env": "P", "api_key_env": "K"}, "choose one way")]:
        with pytest.raises(ConfigError, match=msg):
            config(**bad)


def test_a_config_is_discovered_from_a_real_mapping_shape():
    """`cascade config discover` on a mapping with nested objects, multi-fields, a vector and unusable types."""
    from connectors.opensearch.mapping import config_from_mapping

    mapping = {"articles-v2": {"mappings": {"properties": {
        "title": {"type": "text", "analyzer": "english", "fields": {"raw": {"type": "keyword"}}},
        "body": {"type": "text"},
        "meta": {"properties": {"year": {"type": "integer"}, "Score": {"type": "scaled_float", "scaling_factor": 100},
                                "tags": {"type": "keyword"}, "published": {"type": "date"}}},
        "location": {"type": "geo_point"},
        "emb": {"type": "knn_vector", "dimension": 384},
        "old_emb": {"type": "knn_vector", "dimension": 768},
    }}}}
    data, skipped = config_from_mapping(mapping, "articles", {"hosts": ["https://h:9200"], "index": "articles"}, 384)
    assert data["fields"] == {"title": {"type": "text", "analyzer": "english"},
                              "body": {"type": "text", "analyzer": "standard"},
                              "meta_year": {"type": "integer"}, "meta_score": {"type": "float"},
                              "meta_tags": {"type": "keyword"}, "meta_published": {"type": "date"}}
    assert data["backend"]["field_map"] == {"meta_year": "meta.year", "meta_score": "meta.Score",
                                            "meta_tags": "meta.tags", "meta_published": "meta.published"}
    assert data["backend"]["knn_field"] == "emb" and list(data["retrievers"]) == ["bm25", "knn"]
    assert data["embedder"]["fields"] == ["title", "body"] and data["features"]["semantic"] is True
    assert any("location (geo_point" in s for s in skipped) and any("old_emb" in s for s in skipped)
    parse_config(json.loads(json.dumps(data)), "articles.yaml")  # what start-up accepts
    with pytest.raises(ValueError, match="no text field"):
        config_from_mapping({"i": {"mappings": {"properties": {"n": {"type": "long"}}}}}, "x", {})
