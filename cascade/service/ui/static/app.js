// The workbench's shell: views (from the URL's hash, so any view of any query is a link), the shared query
// form, index and profile pickers, the API key, errors and status, and judging (shared by the views).
import { api, apiKey, setApiKey, enc } from "./api.js";
import { h, clear, $, $$ } from "./dom.js";
import { showCascade, cascadeKeys, refreshLabels } from "./cascade.js";
import { initCompare, showCompare, syncCompareProfiles } from "./compare.js";
import { showJudgments } from "./judgments.js";
import { showEvals } from "./evals.js";
import { showExperiments, stopExperiments } from "./experiments.js";

export const state = {
  view: "cascade",
  indexes: [],
  index: null,
  info: null, // GET /v1/indexes/{index}/cascade
  experiments: [],
  judged: [], // judged queries of the index
};

const VIEWS = ["cascade", "compare", "judgments", "evals", "experiments"];

// ------------------------------------------------------------------ status and errors

export function showError(err) {
  const box = $("#error");
  clear(box);
  if (!err) { box.hidden = true; return; }
  const text = err.describe ? err.describe() : String(err.message || err);
  box.append(h("strong", {}, "Error "), text);
  if (err.requestId) box.append(h("span", { class: "muted small" }, ` (request ${err.requestId})`));
  box.hidden = false;
}

export function status(text) {
  $("#status").textContent = text || "";
}

// ------------------------------------------------------------------ the query form

export function params() {
  return {
    index: $("#index").value,
    q: $("#q").value.trim(),
    profile: $("#profile").value,
    filters: $("#filters").value.trim(),
    depth: Number($("#depth").value),
  };
}

// `year>=2019 journal=Nature,Cell "venue=New Scientist"` into a search filters object.
export function parseFilters(text) {
  const out = {};
  const tokens = text.match(/"[^"]*"|\S+/g) || [];
  for (let tok of tokens) {
    tok = tok.replace(/^"|"$/g, "");
    const m = tok.match(/^([^<>=!]+)(>=|<=|>|<|=)(.*)$/);
    if (!m) throw new Error(`filter ${JSON.stringify(tok)}: expected FIELD=VALUE, FIELD>=VALUE, FIELD<VALUE, …`);
    const [, field, op, raw] = m;
    const val = (x) => { try { const v = JSON.parse(x); return typeof v === "number" || typeof v === "string" ? v : x; } catch (_) { return x; } };
    if (op === "=") {
      const vals = raw.split(",").map((s) => s.trim()).filter(Boolean).map(val);
      out[field] = vals.length === 1 ? vals[0] : vals;
    } else {
      const key = { ">=": "gte", "<=": "lte", ">": "gt", "<": "lt" }[op];
      out[field] = { ...(typeof out[field] === "object" && !Array.isArray(out[field]) ? out[field] : {}), [key]: val(raw) };
    }
  }
  return out;
}

// The form's filters as search takes them, or null once the error says why they do not parse.
export function formFilters(p = params()) {
  try {
    return parseFilters(p.filters);
  } catch (err) {
    showError(err);
    return null;
  }
}

function hashFor(view, extra = {}) {
  const p = params();
  const q = new URLSearchParams();
  if (p.index) q.set("index", p.index);
  if (p.q) q.set("q", p.q);
  if (p.profile) q.set("profile", p.profile);
  if (p.filters) q.set("filters", p.filters);
  if (p.depth !== 20) q.set("depth", String(p.depth));
  for (const [k, v] of Object.entries(extra)) if (v) q.set(k, v);
  const s = q.toString();
  return `#/${view}${s ? "?" + s : ""}`;
}

export function setHash(view, extra = {}) {
  const next = hashFor(view, extra);
  if (location.hash !== next) history.replaceState(null, "", next);
}

function readHash() {
  const m = location.hash.match(/^#\/([a-z]+)(?:\?(.*))?$/);
  const view = m && VIEWS.includes(m[1]) ? m[1] : "cascade";
  return { view, args: new URLSearchParams(m ? m[2] || "" : "") };
}

// ------------------------------------------------------------------ indexes and profiles

async function loadIndexes() {
  const list = await api("/v1/indexes");
  state.indexes = list.indexes;
  const sel = clear($("#index"));
  for (const ix of list.indexes) {
    sel.append(h("option", { value: ix.name }, ix.status === "ready" ? ix.name : `${ix.name} (${ix.status})`));
  }
  if (!list.indexes.length) throw new Error("this service has no index");
}

export async function selectIndex(name, profile = null) {
  const changed = state.index !== name;
  state.index = name;
  $("#index").value = name;
  const ix = state.indexes.find((i) => i.name === name);
  state.info = await api(`/v1/indexes/${enc(name)}/cascade`);
  const profiles = Object.keys(state.info.profiles || {});
  const list = profiles.length ? profiles : ix ? ix.profiles : [];
  const sel = clear($("#profile"));
  for (const p of list) {
    const desc = state.info.config?.profiles?.[p]?.description;
    sel.append(h("option", { value: p, title: desc || null }, p === state.info.default_profile ? `${p} (default)` : p));
  }
  sel.value = profile && list.includes(profile) ? profile : state.info.default_profile;
  syncCompareProfiles(list, state.info.default_profile);
  if (changed) await loadJudged();
}

export async function loadJudged() {
  const dl = clear($("#judged-queries"));
  state.judged = [];
  try {
    const got = await api(`/v1/indexes/${enc(state.index)}/judgments/queries?limit=3000`);
    state.judged = got.queries;
    for (const q of got.queries) dl.append(h("option", { value: q.query }, `${q.source} · ${q.relevant} relevant`));
  } catch (err) {
    if (err.status !== 401 && err.status !== 403) showError(err);
  }
}

async function loadExperiments() {
  try {
    state.experiments = (await api("/v1/experiments")).experiments;
  } catch (_) {
    state.experiments = [];
  }
}

// ------------------------------------------------------------------ judging (cascade and compare views)

// ``query``: the text the shown ranking was computed for (not whatever the query box holds now).
export async function judge(docId, grade, query) {
  const p = params();
  query = query || p.q;
  if (!query) return null;
  try {
    const got = await api(`/v1/indexes/${enc(state.index)}/judgments`, { method: "PUT", body: { query, doc_id: docId, grade } });
    showError(null);
    status(grade === null ? `Removed the judgment of ${docId}.`
      : `Saved: ${docId} judged ${grade} for query ${got.query_id} (${state.index}/qrels/ui.tsv).`);
    refreshLabels(got);
    loadJudged();
    return got;
  } catch (err) {
    showError(err);
    return null;
  }
}

// ------------------------------------------------------------------ views

async function show(view, args, rerun = false) {
  state.view = view;
  for (const v of VIEWS) {
    $(`#view-${v}`).hidden = v !== view;
    const link = $(`nav a[data-view="${v}"]`);
    if (v === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  const querying = ["cascade", "compare"].includes(view);
  $$("[data-query]").forEach((el) => { el.hidden = !querying; }); // the index picker stays: every view is per index
  $$("[data-only]").forEach((el) => { el.hidden = el.dataset.only !== view; });
  if (view !== "experiments") stopExperiments();
  showError(null);
  if (view === "cascade" && params().q) await showCascade(rerun);
  if (view === "compare") await showCompare(args);
  if (view === "judgments") await showJudgments();
  if (view === "evals") await showEvals();
  if (view === "experiments") await showExperiments();
}

async function fromHash() {
  const { view, args } = readHash();
  if (args.get("index") && args.get("index") !== state.index && state.indexes.some((i) => i.name === args.get("index"))) {
    await selectIndex(args.get("index"), args.get("profile"));
  } else if (args.get("profile")) {
    $("#profile").value = args.get("profile");
  }
  if (args.has("q")) $("#q").value = args.get("q");
  if (args.has("filters")) $("#filters").value = args.get("filters");
  if (args.has("depth") && [...$("#depth").options].some((o) => o.value === args.get("depth"))) $("#depth").value = args.get("depth");
  await show(view, args);
}

function keyState() {
  $("#key-state").textContent = apiKey() ? "set" : "none";
}

async function main() {
  keyState();
  $("#key-button").addEventListener("click", () => { $("#key-input").value = apiKey(); $("#key-dialog").showModal(); });
  $("#key-dialog").addEventListener("close", () => {
    const how = $("#key-dialog").returnValue;
    if (how === "save") setApiKey($("#key-input").value.trim());
    if (how === "clear") setApiKey("");
    keyState();
    if (how === "save" || how === "clear") { status(how === "save" ? "API key set for this tab." : "API key cleared."); loadJudged(); }
    $("#key-button").focus();
  });
  $("#help-button").addEventListener("click", () => $("#help-dialog").showModal());
  $("#query-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const view = state.view === "compare" ? "compare" : "cascade";
    setHash(view, view === "compare" ? compareArgs() : {});
    await show(view, readHash().args, true);
  });
  $("#index").addEventListener("change", async () => {
    try {
      await selectIndex($("#index").value);
      showError(null);
      if (!["cascade", "compare"].includes(state.view)) await show(state.view, readHash().args);
    } catch (err) { showError(err); }
  });
  window.addEventListener("hashchange", () => fromHash().catch(showError));
  document.addEventListener("keydown", (ev) => {
    const typing = ev.target.closest("input, select, textarea, dialog");
    if (ev.key === "/" && !typing) { ev.preventDefault(); $("#q").focus(); $("#q").select(); return; }
    if (ev.key === "?" && !typing) { ev.preventDefault(); $("#help-dialog").showModal(); return; }
    if (state.view === "cascade" && !typing) cascadeKeys(ev);
  });
  initCompare();
  try {
    await loadIndexes();
    await loadExperiments();
    const { args } = readHash();
    const first = args.get("index") && state.indexes.some((i) => i.name === args.get("index")) ? args.get("index")
      : (state.indexes.find((i) => i.status === "ready") || state.indexes[0]).name;
    await selectIndex(first, args.get("profile"));
    await fromHash();
  } catch (err) {
    showError(err);
  }
  document.body.dataset.ready = "true";
}

export function compareArgs() {
  return { a: $("#cmp-a").value, b: $("#cmp-b").value, k: $("#cmp-k").value };
}

main();
