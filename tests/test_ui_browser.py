"""The workbench in a real browser: Debian's Chromium driven by Playwright against a real service (Redis for
experiment events) over a real SciFact index, with the admin key required for judgments.

It runs a query and checks the columns, the moves and the provenance against the service's own answer, moves
through the columns with the keyboard, saves a judgment (after the service refused it without the key, and
the page said why) and reads it back from the qrels file, compares two profiles, watches an experiment fed
by simulated users, and runs axe-core (served from the local Python package, never a CDN) for contrast and
other WCAG A/AA rules on every view. Screenshots go to CASCADE_TEST_ARTIFACTS/workbench (default:
.cascade/test-artifacts/workbench, printed).

Run against any service to redraw the README's pictures:
``.venv/bin/python -m tests.test_ui_browser http://127.0.0.1:8080 docs/img "does cholesterol cause heart disease"``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.service_fixtures import RedisServer, ServerThread, wait_until
from tests.ui_fixtures import workbench_index  # noqa: F401  (session fixture)

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
KEY = "workbench-test-key"


@pytest.fixture(scope="session")  # session: set up before the session-wide index, so a skip builds nothing
def browser_tools() -> None:
    """Skip (with the reason) before anything is built when what the tests drive is missing."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (`make test` installs it: apt-get install chromium)")
    try:
        import axe_playwright_python  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"{exc.name} is not installed (the dev extra: pip install -e '.[dev]')")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (`make test` installs it): experiments need it")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where the screenshots go: CASCADE_TEST_ARTIFACTS, else .cascade/test-artifacts (kept after the run, not
    in git; pytest's temporary folders are pruned after three runs)."""
    default = Path(__file__).resolve().parents[1] / ".cascade" / "test-artifacts"
    out = Path(os.environ.get("CASCADE_TEST_ARTIFACTS") or default) / "workbench"
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nworkbench screenshots: {out}")
    return out


@pytest.fixture(scope="module")
def served(browser_tools, workbench_index, tmp_path_factory):  # noqa: F811
    from cascade.service import create_app
    from cascade.service.registry import ConfigSource

    tmp = tmp_path_factory.mktemp("ui-browser")
    redis = RedisServer(tmp)
    redis.start()
    s = workbench_index.settings(tmp, redis_url=redis.url, admin_api_key=KEY, public_ops_endpoints=False,
                                 events_snapshot_every=25)
    try:
        with ServerThread(create_app(s, ConfigSource(directory=workbench_index.config_dir)), s) as server:
            wait_until(lambda: httpx.get(server.url + "/readyz").json()["status"] == "ready", 180, what="/readyz")
            yield server, s, workbench_index
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def browser(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    server = served[0]
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    pg = context.new_page()
    problems: list[str] = []
    outside: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # (the browser logs every 4xx as a console error: the 401s this test provokes on purpose are not problems)
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
          if m.type == "error" and "status of 401" not in m.text else None)
    pg.on("request", lambda r: None if r.url.startswith(server.url) or r.url.startswith("blob:") else outside.append(r.url))
    pg.problems, pg.outside = problems, outside
    yield pg
    context.close()
    assert not outside, f"the page fetched from elsewhere: {outside}"


def _open(page, url: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=30_000)


def _axe(page, what: str) -> None:
    """axe-core's WCAG 2 A/AA rules (colour contrast included) on the page as it is now: no violation."""
    from axe_playwright_python.sync_playwright import Axe

    res = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
                                   "resultTypes": ["violations"]})
    bad = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes'][:3]]}"
           for v in res.response["violations"]]
    assert not bad, f"{what}: accessibility violations:\n" + "\n".join(bad)


def _query(wb) -> tuple[str, str, dict[str, int]]:
    qid = next(iter(wb.qrels))
    return qid, wb.queries[qid], wb.qrels[qid]


def test_cascade_view_columns_moves_provenance_and_keyboard_judging(page, served, artifacts):
    from playwright.sync_api import expect

    server, s, wb = served
    qid, text, rel = _query(wb)
    _open(page, f"{server.url}/ui")
    page.keyboard.press("/")  # the query box, from the keyboard
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    expect(page.locator(".col")).to_have_count(5, timeout=60_000)
    api = httpx.post(f"{server.url}/v1/indexes/scifact/steps", json={"query": text, "profile": "default", "depth": 20},
                     timeout=60).json()
    ranked = [st for st in api["steps"] if st["ranked"]]
    assert page.locator(".col h3").evaluate_all("els => els.map(e => e.textContent)") == \
        [f"{st['name']} {st['kind']}" for st in ranked]
    assert page.locator(".pipeline .chip-name").all_inner_texts() == [st["name"] for st in api["steps"]]
    names = ["bm25", "knn"]
    for ci, st in enumerate(ranked):
        col = page.locator(".col").nth(ci)
        assert col.locator(".hit").evaluate_all("els => els.map(e => e.dataset.id)") == [h["id"] for h in st["hits"]]
        moves = col.locator(".hit .line1").evaluate_all(
            "els => els.map(e => (e.querySelector('.move') || {textContent: ''}).textContent)")
        for hit, shown in zip(st["hits"], moves):
            if st["previous"] is None:
                want = ""
            elif hit["previous_rank"] is None:
                want = "NEW"
            elif hit["new"]:
                want = f"▲{hit['move']} new"
            else:
                want = f"▲{hit['move']}" if hit["move"] > 0 else f"▼{-hit['move']}" if hit["move"] < 0 else "="
            assert shown == want, (st["name"], hit)
        provs = col.locator(".hit .line3").evaluate_all(
            "els => els.map(e => [...e.querySelectorAll('.prov')].map(p => p.textContent))")
        for hit, shown in zip(st["hits"], provs):
            found = [n for n in names if n in api["docs"][hit["id"]]["retrievers"]]
            ranks = [f"{n} #{api['docs'][hit['id']]['retrievers'][n]['rank']}" for n in found]
            assert shown == (ranks if len(found) > 1 else [f"only {r}" for r in ranks]), hit["id"]
    # a stage's dropped documents are listed under it; the dataset's label shows on its relevant documents
    ltr = next(st for st in ranked if st["name"] == "ltr")
    assert page.locator(".col").nth(3).locator(".dropped summary").inner_text() == \
        f"{len(ltr['dropped'])} left the top 20"
    judged = [d for d in rel if d in {h["id"] for h in ranked[-1]["hits"]}]
    assert judged
    chip = page.locator(f'.col >> nth=4 >> .hit[data-id="{judged[0]}"] .grade')
    expect(chip).to_have_text(f"judged {rel[judged[0]]}")
    page.screenshot(path=str(artifacts / "cascade.png"))

    # keyboard: into the columns, right to the same document one step later, down, Enter opens its detail
    page.locator(".col").nth(2).locator(".hit").first.focus()
    first = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("ArrowRight")
    ltr_ids = [h["id"] for h in ltr["hits"]]
    want = first if first in ltr_ids else ltr_ids[0]  # the same document when it is listed there, else that row
    assert page.evaluate("[document.activeElement.dataset.id, document.activeElement.dataset.col]") == [want, "3"]
    page.keyboard.press("ArrowDown")
    target = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("Enter")
    expect(page.locator("#detail h2")).to_have_text(page.locator(f'.col >> nth=3 >> .hit[data-id="{target}"] .title').inner_text())
    expect(page.locator("#detail table.features tbody tr")).to_have_count(len(api["docs"][target]["features"]))
    expect(page.locator("#detail caption").first).to_have_text("Every step")

    # judging without the key: the service refuses, and the page shows its message
    page.keyboard.press("2")
    expect(page.locator("#error")).to_contain_text("401 · X-API-Key: saving judgments needs the admin key")
    # set the key in the dialog, then judge from the keyboard again
    page.click("#key-button")
    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")
    expect(page.locator("#key-state")).to_have_text("set")
    page.locator(f'.col >> nth=3 >> .hit[data-id="{target}"]').focus()
    page.keyboard.press("2")
    expect(page.locator("#status")).to_contain_text(f"Saved: {target} judged 2")
    expect(page.locator('#detail .gbtn[aria-pressed="true"]')).to_contain_text("Highly relevant")
    from cascade.datasets import load_qrels

    assert load_qrels(s.judgments_dir / "scifact", "ui") == {qid: {target: 2}}  # on disk, as qrels
    expect(page.locator(f'.hit[data-id="{target}"] .grade').first).to_have_text("judged 2")
    _axe(page, "cascade view")
    page.screenshot(path=str(artifacts / "cascade-judged.png"))
    assert not page.problems, page.problems


def test_compare_view(page, served, artifacts):
    from playwright.sync_api import expect

    server, _, wb = served
    _, text, rel = _query(wb)
    _open(page, f"{server.url}/ui#/compare")
    page.fill("#q", text)
    page.select_option("#cmp-exp", "ce-pays")  # an experiment's two arms
    assert [page.input_value("#cmp-a"), page.input_value("#cmp-b")] == ["fusion", "default"]
    page.click("#cmp-run")
    expect(page.locator(".clist")).to_have_count(2, timeout=60_000)
    api = httpx.post(f"{server.url}/v1/indexes/scifact/compare",
                     json={"query": text, "a": "fusion", "b": "default", "k": 10, "depth": 20}, timeout=60).json()
    expect(page.locator("#m-overlap .big")).to_have_text(f"{api['overlap']} / 10")
    expect(page.locator("#m-rbo .big")).to_have_text(f"{api['rbo']:.3f}")
    expect(page.locator("#m-rbo")).to_contain_text("RBO_ext@10")  # which RBO: extrapolated, not the lower bound
    expect(page.locator("#m-jaccard .big")).to_have_text(f"{api['jaccard']:.3f}")
    expect(page.locator("#m-ndcg-a .big")).to_have_text(f"{api['a']['ndcg_10']:.3f}")
    expect(page.locator("#m-ndcg-b .big")).to_have_text(f"{api['b']['ndcg_10']:.3f}")
    for i, side in enumerate(("a", "b")):
        ids = page.locator(".clist").nth(i).locator(".cbtn").evaluate_all("els => els.map(e => e.dataset.id)")
        assert ids == [h["id"] for h in api[side]["hits"]]
    both = [r for r in api["rows"] if r["rank_a"] and r["rank_b"] and r["rank_a"] <= 20 and r["rank_b"] <= 20]
    expect(page.locator(".connect path")).to_have_count(len(both))
    _axe(page, "compare view")
    page.screenshot(path=str(artifacts / "compare.png"))
    assert not page.problems, page.problems


def test_experiments_view_with_simulated_traffic(page, served, artifacts):
    from playwright.sync_api import expect

    from cascade.experiments.clicks import grade_scale, model
    from cascade.experiments.simulate import Design, Judged, run_stream
    from cascade.experiments.traffic import HttpTraffic

    server, _, wb = served
    judged = Judged([(q, wb.queries[q]) for q in wb.qrels], grade_scale(wb.qrels), {})
    traffic = HttpTraffic(server.url, "scifact", ["fusion", "default"])
    res = run_stream(judged, Design("interleave", ["fusion", "default"], "ui-test"), model("navigational"), 11,
                     max_impressions=150, look_every=50, stop=False, serve=traffic.serve,
                     on_impression=traffic.post_events)
    report = traffic.wait_counted("ce-pays", res.tally.impressions)
    assert report["served"] == 150
    _open(page, f"{server.url}/ui#/experiments")
    card = page.locator('.expcard[data-experiment="ce-pays"]')
    expect(card.locator("[data-served]")).to_have_text("150", timeout=30_000)
    expect(card.locator(".verdict")).to_contain_text(report["verdict"])
    assert card.locator("tbody tr").first.locator("th").inner_text() == "fusion"
    w, l, t = report["pairs"][0]["wins"], report["pairs"][0]["losses"], report["pairs"][0]["ties"]
    expect(card.locator("table").nth(1)).to_contain_text(f"{w} / {l} / {t}")
    expect(card.locator("svg.chart polygon.band")).to_have_count(1)  # the preference's always-valid band
    _axe(page, "experiments view")
    page.screenshot(path=str(artifacts / "experiments.png"))
    assert not page.problems, page.problems


def test_evaluation_view_charts_the_last_eval(page, served, artifacts):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from playwright.sync_api import expect

    from cascade.builder import open_index
    from cascade.config import load_config_file
    from cascade.evaluation import evaluate
    from cascade.ui.evals import save_last_eval

    server, s, wb = served
    cfg = load_config_file(wb.config_dir / "scifact.yaml")
    opened = open_index(cfg, s, profiles=["fusion"])  # retrieval and fusion only: quick to open and run

    async def run():
        try:
            return await evaluate(opened.cascade("fusion"), wb.queries, wb.qrels, dataset="scifact", split="test")
        finally:
            await opened.close()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API keeps an event loop running in this thread
        rep = pool.submit(asyncio.run, run()).result()
    save_last_eval(rep, s, "cascade eval --dataset scifact --split test --profile fusion")  # what `cascade eval` does
    _open(page, f"{server.url}/ui")
    page.click("#key-button")  # evaluations are not public on this service (CASCADE_PUBLIC_OPS_ENDPOINTS=false)
    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")
    page.click('nav a[data-view="evals"]')
    card = page.locator(".evalcard")
    expect(card).to_have_count(1, timeout=30_000)
    expect(card.locator("h3")).to_contain_text("Profile fusion")
    expect(card.locator("svg.chart")).to_have_count(3)
    rows = card.locator("table tbody tr")
    expect(rows).to_have_count(len(rep.stages))
    for i, st in enumerate(rep.stages):
        cells = rows.nth(i).locator("th, td").all_inner_texts()
        assert cells[0] == st.name and cells[2] == f"{st.ndcg_10:.4f}" and cells[4] == f"{st.recall_100:.4f}"
    assert card.locator("svg.chart").first.locator("rect.bar").count() == len(rep.stages)
    _axe(page, "evaluation view")
    page.screenshot(path=str(artifacts / "evals.png"))
    assert not page.problems, page.problems


def screenshots(url: str, out: Path, query: str, index: str | None = None, width: int = 1680) -> list[Path]:
    """The cascade and compare views of ``query`` on a running service, as PNG files in ``out``."""
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    made = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = b.new_page(viewport={"width": width, "height": 1050})
        base = f"{url}/ui#/cascade?q={quote(query)}" + (f"&index={quote(index)}" if index else "")
        _open(pg, base)
        expect(pg.locator(".col").first).to_be_visible(timeout=120_000)
        pg.locator(".col").last.locator(".hit").first.click()
        pg.mouse.move(0, 0)
        made.append(out / "workbench-cascade.png")
        pg.screenshot(path=str(made[-1]))
        pg.goto(base.replace("#/cascade", "#/compare") + "&a=fusion&b=default")
        expect(pg.locator(".clist").first).to_be_visible(timeout=120_000)
        made.append(out / "workbench-compare.png")
        pg.screenshot(path=str(made[-1]))
        b.close()
    return made


if __name__ == "__main__":
    for path in screenshots(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "statins"):
        print("wrote", path)
