// Compare: two rank profiles (or an experiment's two arms) on the same query: overlap, Jaccard and RBO at k,
// every document's rank difference (lines join a document's two places), nDCG@10 of each when judged.
import { api, enc } from "./api.js";
import { h, clear, $, $$, fmt, fixed, titleOf, gradeChip, GRADES } from "./dom.js";
import { state, params, formFilters, showError, status, judge, setHash, compareArgs } from "./app.js";

const ROW = 54; // px: each list row (CSS .crow has the same height), so connector lines meet their rows
let last = null;
let selected = null;

export function initCompare() {
  $("#cmp-run").addEventListener("click", () => {
    setHash("compare", compareArgs());
    showCompare(null, true);
  });
  $("#cmp-exp").addEventListener("change", () => {
    const exp = state.experiments.find((e) => e.id === $("#cmp-exp").value);
    if (!exp) return;
    $("#cmp-a").value = exp.arms[0];
    $("#cmp-b").value = exp.arms[1];
  });
  document.addEventListener("keydown", (ev) => {
    if (state.view !== "compare" || !selected || ev.target.closest("input, select, textarea, dialog")) return;
    if (/^[0-3]$/.test(ev.key)) { ev.preventDefault(); doJudge(selected, Number(ev.key)); }
    if (ev.key === "Delete" || ev.key === "Backspace") { ev.preventDefault(); doJudge(selected, null); }
  });
}

export function syncCompareProfiles(profiles, dflt) {
  for (const id of ["#cmp-a", "#cmp-b"]) {
    const sel = clear($(id));
    for (const p of profiles) sel.append(h("option", { value: p }, p));
  }
  $("#cmp-a").value = dflt;
  $("#cmp-b").value = profiles.find((p) => p !== dflt) || dflt;
  const ex = clear($("#cmp-exp"));
  ex.append(h("option", { value: "" }, "(none)"));
  for (const e of state.experiments.filter((e) => e.index === state.index)) {
    ex.append(h("option", { value: e.id }, `${e.id}: ${e.arms.slice(0, 2).join(" vs ")} (${e.mode})`));
  }
}

export async function showCompare(args, force = false) {
  if (args) {
    for (const [k, id] of [["a", "#cmp-a"], ["b", "#cmp-b"], ["k", "#cmp-k"]]) {
      if (args.get(k)) $(id).value = args.get(k);
    }
  }
  const p = params();
  if (!p.q) {
    if (force) showError(new Error("type a query first"));
    return;
  }
  const filters = formFilters(p);
  if (!filters) return;
  const a = $("#cmp-a").value, b = $("#cmp-b").value, k = Number($("#cmp-k").value);
  status(`Comparing ${a} and ${b} on “${p.q}”…`);
  try {
    last = await api(`/v1/indexes/${enc(p.index)}/compare`, {
      method: "POST", body: { query: p.q, filters, a, b, k, depth: Math.max(p.depth, k) },
    });
    showError(null);
    render();
    status(`${a} vs ${b}: ${last.overlap} of the top ${last.k} shared, RBO_ext ${fixed(last.rbo, 3)}`);
  } catch (err) {
    showError(err);
    status("");
  }
}

function metric(label, value, note, id) {
  return h("div", { class: "metric", id }, h("dt", {}, label), h("dd", {}, h("span", { class: "big" }, value), note ? h("span", { class: "muted small" }, note) : null));
}

function ndcgText(side) {
  return side.ndcg_10 === null ? "not judged" : fixed(side.ndcg_10, 3);
}

function render() {
  const out = clear($("#compare-out"));
  const { a, b, k } = last;
  out.append(h("dl", { class: "metrics" },
    metric(`Overlap@${k}`, `${last.overlap} / ${k}`, "documents both top k share", "m-overlap"),
    metric(`Jaccard@${k}`, fixed(last.jaccard, 3), "|A∩B| / |A∪B| of the top k", "m-jaccard"),
    metric(`RBO_ext@${k} (p=${last.rbo_p})`, fixed(last.rbo, 3), "rank-biased overlap, extrapolated (not the lower bound)", "m-rbo"),
    metric(`nDCG@10 · ${a.profile}`, ndcgText(a), `judged ${a.judged_10}/10 · ${fmt(a.took_ms, 0)} ms`, "m-ndcg-a"),
    metric(`nDCG@10 · ${b.profile}`, ndcgText(b), `judged ${b.judged_10}/10 · ${fmt(b.took_ms, 0)} ms`, "m-ndcg-b")));
  if (!last.judgments.judged) out.append(h("p", { class: "muted" }, "This query has no judgments: judge documents (select one, then 0–3) to get nDCG@10 for both."));
  out.append(judgeBar());

  const rankA = Object.fromEntries(last.rows.map((r) => [r.id, r.rank_a]));
  const rankB = Object.fromEntries(last.rows.map((r) => [r.id, r.rank_b]));
  const depth = Math.max(a.hits.length, b.hits.length);
  const grid = h("div", { class: "cgrid" });
  grid.append(h("h3", { class: "chead" }, `A · ${a.profile}`), h("span", { "aria-hidden": "true" }), h("h3", { class: "chead" }, `B · ${b.profile}`));
  grid.append(list(a.hits, (id) => rankB[id], "B", "A"));
  grid.append(connectors(depth));
  grid.append(list(b.hits, (id) => rankA[id], "A", "B"));
  out.append(grid);

  const table = h("table", { class: "nums diffs" }, h("caption", {}, "Rank differences (largest first; Δ > 0: higher in B)"),
    h("thead", {}, h("tr", {}, ...["document", "A rank", "B rank", "Δ", "label"].map((c) => h("th", { scope: "col" }, c)))));
  const body = h("tbody");
  const rows = [...last.rows].sort((x, y) => Math.abs(y.diff ?? 1e9) - Math.abs(x.diff ?? 1e9));
  for (const r of rows) {
    const doc = last.docs[r.id];
    body.append(h("tr", { dataset: { id: r.id } }, h("th", { scope: "row" }, h("span", { class: "docid" }, r.id), " ", titleOf(doc.fields, r.id)),
      h("td", {}, r.rank_a ? `#${r.rank_a}` : "–"), h("td", {}, r.rank_b ? `#${r.rank_b}` : "–"),
      h("td", { class: r.diff > 0 ? "up" : r.diff < 0 ? "down" : "" }, r.diff === null ? "only one" : r.diff > 0 ? `▲${r.diff}` : r.diff < 0 ? `▼${-r.diff}` : "="),
      h("td", {}, gradeChip(r.label, doc.label_source) || "")));
  }
  table.append(body);
  out.append(table);
}

function list(hits, otherRank, otherName, name) {
  const ol = h("ol", { class: "clist", "aria-label": `${name}: ${last[name.toLowerCase()].profile}` });
  for (const hit of hits) {
    const doc = last.docs[hit.id];
    const o = otherRank(hit.id);
    let badge;
    if (!o) badge = h("span", { class: "move new", title: `not in ${otherName}'s ranking` }, `only ${name}`);
    else if (o > hits.length) badge = h("span", { class: "move down", title: `${otherName} ranks it #${o}` }, `${otherName} #${o}`);
    else {
      const d = name === "B" ? o - hit.rank : hit.rank - o;
      badge = d === 0 ? h("span", { class: "move same" }, `${otherName} =`)
        : h("span", { class: `move ${d > 0 ? "up" : "down"}`, title: `${otherName} ranks it #${o}` }, `${otherName} #${o}`);
    }
    ol.append(h("li", { class: "crow" }, h("button", {
      type: "button", class: ["cbtn", hit.id === selected && "selected"], dataset: { id: hit.id }, "aria-pressed": hit.id === selected ? "true" : "false",
      onclick: () => { selected = hit.id; render(); $(`.cbtn[data-id="${CSS.escape(hit.id)}"]`)?.focus(); },
    },
    h("span", { class: "line1" }, h("span", { class: "rank" }, `#${hit.rank}`), badge, gradeChip(doc.label, doc.label_source),
      h("span", { class: "score" }, fixed(hit.score, 3))),
    h("span", { class: "title" }, titleOf(doc.fields, hit.id)))));
  }
  return ol;
}

function connectors(depth) {
  const height = depth * ROW;
  const svg = h("svg:svg", { class: "connect", viewBox: `0 0 100 ${height}`, preserveAspectRatio: "none", width: "100%", height, "aria-hidden": "true" });
  for (const r of last.rows) {
    if (!r.rank_a || !r.rank_b || r.rank_a > last.a.hits.length || r.rank_b > last.b.hits.length) continue;
    const y1 = (r.rank_a - 0.5) * ROW, y2 = (r.rank_b - 0.5) * ROW;
    const cls = r.diff > 0 ? "up" : r.diff < 0 ? "down" : "same";
    svg.append(h("svg:path", { d: `M0,${y1} C50,${y1} 50,${y2} 100,${y2}`, class: `link ${cls}`, "vector-effect": "non-scaling-stroke" }));
  }
  return svg;
}

function judgeBar() {
  const bar = h("div", { class: "judgebar" });
  if (!selected || !last.docs[selected]) {
    bar.append(h("p", { class: "muted small" }, "Select a document in either list to judge it (or press 0–3)."));
    return bar;
  }
  const doc = last.docs[selected];
  bar.append(h("span", {}, "Judge ", h("b", {}, titleOf(doc.fields, selected)), " ", h("span", { class: "docid" }, selected), " "));
  const group = h("span", { class: "judge", role: "group", "aria-label": "Judge the selected document" });
  for (const g of GRADES) {
    group.append(h("button", { type: "button", class: `gbtn g${g.grade}`, "aria-pressed": doc.label === g.grade ? "true" : "false",
      onclick: () => doJudge(selected, g.grade) }, h("kbd", {}, String(g.grade)), ` ${g.name}`));
  }
  bar.append(group);
  return bar;
}

async function doJudge(id, grade) {
  const got = await judge(id, grade, last.query);
  if (got) await showCompare(null);
}
