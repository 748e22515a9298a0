"""What the hardening issue found in public answers and admin errors, pinned (FastAPI's test client, real index).

- Public answers (``/readyz``, ``/v1/indexes``, ``/v1/indexes/{index}/cascade``,
  the 503 of an unavailable index) name indexes and models, never the server's
  folders; the full reason stays in the log and in the admin's reload answer.
- ``/metrics``, ``/docs``, ``/redoc`` and ``/openapi.json`` are public by
  default and need the admin key with ``CASCADE_PUBLIC_OPS_ENDPOINTS=false``.
- A reload or ``cascade config check`` of a config that is not UTF-8, or that
  names a model that is not there, answers with the file's full path and the key.
- A lone surrogate in a request body is reported at its field, not as "body".
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cascade.cli import app as cli
from tests.service_fixtures import FailingStage, tiny_index_dir, write_config  # noqa: F401  (fixtures)
from tests.test_service_api import SEARCH, make_client  # noqa: F401  (fixtures)

KEY = {"X-API-Key": "s3cret"}


def _server_paths(tmp_path, tiny_index_dir) -> list[str]:
    return [str(tmp_path), str(tiny_index_dir), str(tiny_index_dir.parent)]


def test_public_answers_name_no_server_paths(make_client, tmp_path, tiny_index_dir, models_dir):
    ce = {"type": "cross_encoder", "model": "minilm-l6-ce-v1", "rerank": 3}
    client = make_client({"tiny": {"stages": [ce]}, "ghost": {}}, models_dir=models_dir, admin_api_key="s3cret")
    bodies = {
        "readyz": client.get("/readyz").text,
        "indexes": client.get("/v1/indexes").text,
        "cascade": client.get("/v1/indexes/tiny/cascade").text,
        "ghost-cascade": client.get("/v1/indexes/ghost/cascade").text,
        "503": client.post("/v1/indexes/ghost/search", json={"query": "x"}).text,
        "search": client.post(SEARCH, json={"query": "solar", "explain": True}).text,
    }
    for name, body in bodies.items():
        for p in _server_paths(tmp_path, tiny_index_dir) + [str(models_dir)]:
            assert p not in body, (name, p, body[:400])
    ghost = client.get("/readyz").json()["indexes"]["ghost"]["error"]
    assert "IndexNotFound" in ghost and "cascade index --dataset ghost" in ghost and ".../" in ghost
    plan = client.get("/v1/indexes/tiny/cascade").json()["plan"]
    assert plan[-1]["model"] == "minilm-l6-ce-v1"
    # A reload's index list is a public answer too (the full reason is in the log, and in the 422 that
    # rejects a reload, which only the admin sees).
    (tmp_path / "configs" / "tiny.yaml").unlink()
    r = client.post("/v1/admin/reload", headers=KEY)
    assert r.status_code == 200 and r.json()["indexes"][0]["error"] == ghost


class _LeakyStage(FailingStage):
    async def score(self, query, candidates, deadline):
        raise OSError("cannot read /srv/secret/models/ce-v2/model.safetensors")


def test_a_failed_stage_is_reported_without_server_paths(make_client):
    client = make_client()
    client.app.state.service.registry.entries["tiny"].cascade.stages.append(_LeakyStage())
    body = client.post(SEARCH, json={"query": "deep ocean", "explain": True}).json()
    assert body["degraded"] == ["flaky"]
    assert body["trace"][-1]["error"] == "OSError: cannot read .../model.safetensors"


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json", "/docs", "/redoc"])
def test_ops_endpoints_are_public_unless_configured_otherwise(make_client, path):
    open_client = make_client()
    assert open_client.get(path).status_code == 200
    closed = make_client(public_ops_endpoints=False, admin_api_key="s3cret")
    r = closed.get(path)
    assert r.status_code == 401 and r.json()["error"]["field"] == "X-API-Key"
    assert closed.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert closed.get(path, headers=KEY).status_code == 200
    assert closed.get("/healthz").status_code == 200 and closed.get("/readyz").status_code == 200
    no_key = make_client(public_ops_endpoints=False)
    assert no_key.get(path).status_code == 403


def test_reload_errors_name_the_full_path_and_the_key(make_client, tmp_path, models_dir):
    client = make_client(admin_api_key="s3cret", models_dir=models_dir)
    cfg = tmp_path / "configs" / "tiny.yaml"
    good = cfg.read_text()

    cfg.write_bytes(good.encode() + b"\n# caf\xe9\n")
    r = client.post("/v1/admin/reload", headers=KEY)
    err = r.json()["error"]
    assert r.status_code == 422 and err["type"] == "config_error" and err["file"] == str(cfg.absolute())
    assert err["field"].startswith("line ") and "not valid UTF-8 (byte 0xe9)" in err["message"]

    feats = "features:\n  version: 1\n"
    for stage, needle in (({"type": "cross_encoder", "model": "no-such-ce", "rerank": 3}, "no-such-ce"),
                          ({"type": "ltr", "model": "no-such-ltr", "rerank": 3}, "no-such-ltr")):
        cfg.write_text(good + feats + "stages:\n- " + json.dumps(stage) + "\n")
        r = client.post("/v1/admin/reload", headers=KEY)
        err = r.json()["error"]
        assert r.status_code == 422 and err["field"] == "stages.0.model", r.text
        assert err["file"] == str(cfg.absolute()) and needle in err["message"]
        assert " .cascade/" not in err["message"]  # directories named in full, like every other error
    assert client.post(SEARCH, json={"query": "solar"}).status_code == 200  # the running cascade kept serving


def test_config_check_names_a_file_that_is_not_utf8(tmp_path):
    folder = tmp_path / "configs"
    path = write_config(folder)
    path.write_bytes(path.read_bytes() + b"\n\xff\xfe\n")
    r = CliRunner().invoke(cli, ["config", "check", str(folder)])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit) and "Traceback" not in r.output
    out = " ".join(r.output.split())
    assert str(path.absolute()) in out.replace(" ", "") or path.name in out
    assert "not valid UTF-8" in out


def test_filter_values_beyond_a_field_are_one_rule_in_the_service(make_client):
    """Regression (review): the service refused date bounds the query layer moves to the field's edge, and a
    10**400 integer for a float field was a 500 (OverflowError)."""
    client = make_client()
    for filters in ({"published": {"gte": "1600-01-01"}}, {"published": {"lt": "3000-01-01"}},
                    {"cites": {"gte": -(10 ** 400)}}, {"year": {"gte": 2019.5}}):
        r = client.post(SEARCH, json={"query": "solar", "filters": filters})
        assert r.status_code == 200, (filters, r.text)
    r = client.post(SEARCH, json={"query": "solar", "filters": {"year": {"gte": 2019.5}}, "size": 10})
    assert "d1" not in [h["id"] for h in r.json()["hits"]]  # d1 is from 2019: gte 2019.5 means 2020 and later
    for filters, field in (({"cites": 10 ** 400}, "filters.cites"), ({"published": 10 ** 400}, "filters.published"),
                           ({"published": {"gte": "0000-01-01"}}, "filters.published.gte")):
        r = client.post(SEARCH, json={"query": "solar", "filters": filters})
        assert r.status_code == 422 and r.json()["error"]["field"] == field, (filters, r.text)


def test_a_lone_surrogate_is_reported_at_its_field(make_client):
    client = make_client()
    for body, field in ((b'{"query": "solar \\ud800"}', "query"),
                        (b'{"query": "solar", "filters": {"journal": ["Energy", "\\udfff"]}}', "filters.journal.1"),
                        (b'{"query": "solar", "user_id": "\\ud83d"}', "user_id")):
        r = client.post(SEARCH, content=body, headers={"content-type": "application/json"})
        err = r.json()["error"]
        assert r.status_code == 422 and err["field"] == field and "lone surrogate" in err["message"], r.text
    ok = client.post(SEARCH, content=b'{"query": "solar \\ud83d\\ude00"}', headers={"content-type": "application/json"})
    assert ok.status_code == 200  # a paired escape is just an emoji
    bad = client.post(SEARCH, content=b'{"query": "solar"', headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body"
