// The cascade view: one column per step (each retriever, the fusion, each stage) with every document's rank,
// score, move since the previous ranking step and retriever provenance; a document's features and per-step
// scores on selection; judging with 0-3.
import { api, enc } from "./api.js";
import { h, clear, $, $$, fmt, fixed, ms, titleOf, gradeChip, GRADES } from "./dom.js";
import { params, formFilters, showError, status, judge } from "./app.js";

let last = null; // the last StepsResponse
let selected = null; // the selected document id

export function lastSteps() {
  return last;
}

let lastKey = null; // what ``last`` was computed for: switching views back shows it again without a rerun

export async function showCascade(rerun = false) {
  const p = params();
  if (!p.q) return;
  const key = JSON.stringify([p.index, p.q, p.profile, p.filters, p.depth]);
  if (!rerun && last && key === lastKey) {
    render();
    return;
  }
  const filters = formFilters(p);
  if (!filters) return;
  status(`Running “${p.q}” through profile ${p.profile}…`);
  $("#run").disabled = true;
  $("#view-cascade").setAttribute("aria-busy", "true");
  try {
    last = await api(`/v1/indexes/${enc(p.index)}/steps`, {
      method: "POST", body: { query: p.q, filters, profile: p.profile || null, depth: p.depth },
    });
    lastKey = key;
    showError(null);
    if (selected && !last.docs[selected]) selected = null;
    render();
    const cols = last.steps.filter((s) => s.ranked).length;
    status(`Profile ${last.profile}: ${cols} ranking steps in ${ms(last.took_ms)}` +
      (last.judgments.judged ? `; ${last.judgments.judged} judged document${last.judgments.judged === 1 ? "" : "s"} for this query`
        : "; this query has no judgments yet"));
  } catch (err) {
    showError(err);
    status("");
  } finally {
    $("#run").disabled = false;
    $("#view-cascade").removeAttribute("aria-busy");
  }
}

// ------------------------------------------------------------------ rendering

function retrieverNames() {
  return last.steps.filter((s) => s.kind === "retriever").map((s) => s.name);
}

function costText(step) {
  if (step.kind === "retriever") return `${step.n_out} hits`;
  if (step.kind === "fusion") return `${step.n_in} fused`;
  if (step.kind === "features") return `${step.scored} rows`;
  const parts = [];
  if (step.cost_unit) parts.push(`${step.scored} ${step.cost_unit}`);
  for (const [unit, n] of Object.entries(step.usage || {})) parts.push(`${n} ${unit}`);
  return parts.join(", ") || "–";
}

function renderPipeline() {
  const box = clear($("#pipeline"));
  const total = Math.max(last.took_ms, ...last.steps.map((s) => s.elapsed_ms), 1);
  const list = h("ol", { class: "steps" });
  for (const s of last.steps) {
    const start = Math.max(0, s.elapsed_ms - s.ms);
    const bar = h("span", { class: "track", "aria-hidden": "true" },
      h("span", { class: `seg k-${kindClass(s.kind)}`, dataset: { start: (start / total).toFixed(4), width: Math.max(s.ms / total, 0.006).toFixed(4) } }));
    list.append(h("li", { class: ["chip", `k-${kindClass(s.kind)}`, s.error && "failed"] },
      h("span", { class: "chip-name" }, s.name),
      h("span", { class: "chip-kind" }, s.kind),
      h("span", { class: "chip-io", title: "candidates in → out" }, s.kind === "retriever" ? `→ ${s.n_out}` : `${s.n_in} → ${s.n_out}`),
      h("span", { class: "chip-cost", title: "work done (cost unit)" }, costText(s)),
      h("span", { class: "chip-ms", title: `this step ${ms(s.ms)}; done ${ms(s.elapsed_ms)} after the search started` }, ms(s.ms)),
      bar));
  }
  box.append(list);
  // CSP-safe: widths set through the CSSOM, not a style attribute.
  $$(".seg", box).forEach((el) => { el.style.left = `${el.dataset.start * 100}%`; el.style.width = `${el.dataset.width * 100}%`; });
  const j = last.judgments;
  box.append(h("p", { class: "summary" },
    h("span", {}, `profile `, h("b", {}, last.profile)), " · ",
    h("span", {}, `total `, h("b", {}, ms(last.took_ms))), " · ",
    h("span", {}, j.judged ? `${j.judged} judged (${j.relevant} relevant), query id ${j.query_id}` : "no judgments for this query"),
    last.degraded.length ? h("span", { class: "flag bad" }, ` degraded: ${last.degraded.join(", ")}`) : null));
}

function kindClass(kind) {
  return ["retriever", "fusion", "features"].includes(kind) ? kind : "stage";
}

function moveBadge(hit, step) {
  if (!step.previous) return null;
  if (hit.previous_rank === null) return h("span", { class: "move new", title: `not in ${step.previous}` }, "NEW");
  const from = `from #${hit.previous_rank} in ${step.previous}`;
  if (hit.new) return h("span", { class: "move new", title: `entered the top ${last.depth} ${from}` }, `▲${hit.move} new`);
  if (hit.move > 0) return h("span", { class: "move up", title: `up ${hit.move}, ${from}` }, `▲${hit.move}`);
  if (hit.move < 0) return h("span", { class: "move down", title: `down ${-hit.move}, ${from}` }, `▼${-hit.move}`);
  return h("span", { class: "move same", title: `same rank as in ${step.previous}` }, "=");
}

function provenance(doc, names) {
  const found = names.filter((n) => doc.retrievers[n]);
  if (!found.length) return h("span", { class: "prov none", title: "found by no retriever in its top k" }, "–");
  return h("span", { class: "provs" }, found.map((n) => {
    const r = doc.retrievers[n];
    const only = found.length === 1 && names.length > 1;
    return h("span", { class: `prov r${names.indexOf(n) % 4}`, title: `${n}: rank ${r.rank}, score ${fmt(r.score, 4)}` },
      only ? `only ${n} #${r.rank}` : `${n} #${r.rank}`);
  }));
}

function describeHit(hit, step, doc) {
  const bits = [`rank ${hit.rank}`, titleOf(doc.fields, hit.id)];
  if (step.previous && hit.previous_rank !== null) bits.push(hit.move > 0 ? `up ${hit.move}` : hit.move < 0 ? `down ${-hit.move}` : "unchanged");
  if (step.previous && hit.previous_rank === null) bits.push("new");
  if (doc.label !== null && doc.label !== undefined) bits.push(`judged ${doc.label}`);
  return bits.join(", ");
}

function renderColumns() {
  const box = clear($("#columns"));
  const names = retrieverNames();
  const ranked = last.steps.filter((s) => s.ranked);
  ranked.forEach((step, ci) => {
    const stats = h("dl", { class: "stats" },
      h("dt", {}, "in → out"), h("dd", {}, step.kind === "retriever" ? `${step.n_out}` : `${step.n_in} → ${step.n_out}`),
      h("dt", {}, "work"), h("dd", {}, costText(step)),
      h("dt", {}, "time"), h("dd", {}, `${ms(step.ms)}`, h("span", { class: "muted" }, ` (at ${ms(step.elapsed_ms)})`)));
    const flags = [];
    if (step.error) flags.push(h("p", { class: "flag bad" }, `failed: ${step.error} — the ranking was built without it`));
    if (step.note) flags.push(h("p", { class: "flag warn" }, step.note));
    const list = h("ol", { class: "hits", "aria-label": `${step.name}: top ${step.hits.length} of ${step.total}` });
    step.hits.forEach((hit, ri) => {
      const doc = last.docs[hit.id];
      const btn = h("button", {
        type: "button", class: ["hit", !hit.scored && "unscored", hit.id === selected && "selected"],
        tabindex: ci === 0 && ri === 0 ? "0" : "-1", dataset: { id: hit.id, col: String(ci), row: String(ri) },
        "aria-label": describeHit(hit, step, doc), "aria-pressed": hit.id === selected ? "true" : "false",
      },
      h("span", { class: "line1" },
        h("span", { class: "rank" }, `#${hit.rank}`), moveBadge(hit, step),
        gradeChip(doc.label, doc.label_source),
        h("span", { class: "score", title: "this step's score" }, fixed(hit.score, 3))),
      h("span", { class: "title" }, titleOf(doc.fields, hit.id)),
      h("span", { class: "line3" }, h("span", { class: "docid" }, hit.id), provenance(doc, names),
        hit.scored ? null : h("span", { class: "unscored-note", title: "below this stage's rerank window: kept the previous order" }, "not scored")));
      list.append(h("li", {}, btn));
    });
    const col = h("section", { class: ["col", `k-${kindClass(step.kind)}`], "aria-label": `${step.name} (${step.kind})` },
      h("header", {},
        h("h3", {}, step.name, " ", h("span", { class: "kind" }, step.kind)),
        step.previous ? h("p", { class: "muted small" }, `moves vs ${step.previous}`) : h("p", { class: "muted small" }, step.kind === "fusion" ? "provenance: retriever ranks" : "first-stage candidates"),
        stats, flags),
      list);
    if (step.dropped.length) {
      const det = h("details", { class: "dropped" },
        h("summary", {}, `${step.dropped.length} left the top ${last.depth}`));
      const ul = h("ul", {});
      for (const d of step.dropped) {
        const doc = last.docs[d.id];
        ul.append(h("li", {},
          h("button", { type: "button", class: "linkish", dataset: { id: d.id }, "aria-label": `${titleOf(doc.fields, d.id)}: was #${d.previous_rank}, now ${d.rank ? "#" + d.rank : "cut"}` },
            h("span", { class: "rank" }, `#${d.previous_rank}`), " ",
            h("span", { class: "move down" }, d.rank ? `→ #${d.rank}` : "cut"), " ",
            gradeChip(doc.label, doc.label_source), " ", titleOf(doc.fields, d.id))));
      }
      det.append(ul);
      col.append(det);
    }
    box.append(col);
  });
}

function render() {
  $("#cascade-empty").hidden = true;
  $("#cascade-out").hidden = false;
  renderPipeline();
  renderColumns();
  renderDetail();
}

// ------------------------------------------------------------------ the document detail

function renderDetail() {
  const box = clear($("#detail"));
  if (!selected || !last || !last.docs[selected]) {
    box.append(h("p", { class: "muted" }, "Select a document to see its features, its score at every step and to judge it."));
    return;
  }
  const doc = last.docs[selected];
  box.append(h("h2", { id: "detail-title" }, titleOf(doc.fields, selected)));
  box.append(h("p", { class: "docline" }, h("span", { class: "docid" }, selected), " ", gradeChip(doc.label, doc.label_source),
    doc.label !== null && doc.label !== undefined ? h("span", { class: "muted small" }, ` from ${doc.label_source}`) : h("span", { class: "muted small" }, " not judged")));
  const group = h("div", { class: "judge", role: "group", "aria-label": "Judge this document for this query" });
  for (const g of GRADES) {
    group.append(h("button", { type: "button", class: `gbtn g${g.grade}`, "aria-pressed": doc.label === g.grade ? "true" : "false",
      onclick: () => judge(selected, g.grade, last.query), title: `key ${g.grade}` }, h("kbd", {}, String(g.grade)), ` ${g.name}`));
  }
  group.append(h("button", { type: "button", class: "gbtn clear", onclick: () => judge(selected, null, last.query), disabled: doc.label === null || doc.label === undefined || doc.label_source !== "ui" }, "Clear"));
  box.append(group);

  const ranked = last.steps.filter((s) => s.ranked);
  const t = h("table", { class: "nums" }, h("caption", {}, "Every step"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "step"), h("th", { scope: "col" }, "rank"), h("th", { scope: "col" }, "move"), h("th", { scope: "col" }, "score"))));
  const tb = h("tbody");
  for (const s of ranked) {
    const at = doc.steps[s.name];
    const prev = s.previous ? doc.steps[s.previous] : null;
    const move = at && prev ? prev.rank - at.rank : null;
    tb.append(h("tr", {}, h("th", { scope: "row" }, s.name),
      h("td", {}, at ? `#${at.rank}` : s.previous && prev ? "cut" : "–"),
      h("td", { class: move > 0 ? "up" : move < 0 ? "down" : "" }, move === null ? "" : move > 0 ? `▲${move}` : move < 0 ? `▼${-move}` : "="),
      h("td", {}, at ? fixed(at.score, 4) : "")));
  }
  t.append(tb);
  box.append(t);

  if (doc.stages && Object.keys(doc.stages).length) {
    const st = h("table", { class: "nums" }, h("caption", {}, "Scores of each step (own, before any combine)"));
    const body = h("tbody");
    for (const [k, v] of Object.entries(doc.stages)) body.append(h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v === null ? "not scored" : fmt(v, 4))));
    st.append(body);
    box.append(st);
  }
  const names = retrieverNames();
  box.append(h("h3", {}, "Retrievers"), h("p", {}, names.map((n) => doc.retrievers[n]
    ? h("span", { class: `prov r${names.indexOf(n) % 4}` }, `${n} #${doc.retrievers[n].rank} · ${fmt(doc.retrievers[n].score, 3)}`)
    : h("span", { class: "prov none" }, `not in ${n}`))));
  if (doc.features) {
    const entries = Object.entries(doc.features);
    const ft = h("table", { class: "nums features" }, h("caption", {}, `Features (${entries.length}, what the LTR stage reads)`));
    const body = h("tbody");
    for (const [k, v] of entries) body.append(h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, fmt(v, 4))));
    ft.append(body);
    box.append(ft);
  } else {
    box.append(h("p", { class: "muted small" }, "No features: this profile computes none, or the document never reached the fusion's candidates."));
  }
  const dl = h("dl", { class: "fields" });
  for (const [k, v] of Object.entries(doc.fields || {})) dl.append(h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : JSON.stringify(v)));
  box.append(h("h3", {}, "Fields"), dl);
}

function select(id, { focusDetail = false } = {}) {
  selected = id;
  $$(".hit", $("#columns")).forEach((b) => {
    const on = b.dataset.id === id;
    b.classList.toggle("selected", on);
    b.setAttribute("aria-pressed", on ? "true" : "false");
  });
  renderDetail();
  if (focusDetail) $("#detail").focus();
}

export function refreshLabels(got) {
  if (!last || got.query !== last.query) return;
  for (const [id, doc] of Object.entries(last.docs)) {
    doc.label = got.labels[id] ?? null;
    doc.label_source = got.sources[id] ?? null;
  }
  const rel = Object.values(got.labels).filter((g) => g > 0).length;
  last.judgments = { query_id: got.query_id, judged: Object.keys(got.labels).length, relevant: rel };
  const focused = document.activeElement && document.activeElement.classList.contains("hit") ? document.activeElement.dataset : null;
  renderPipeline();
  renderColumns();
  renderDetail();
  if (focused) {
    const again = $(`.hit[data-col="${focused.col}"][data-row="${focused.row}"]`);
    if (again) moveFocus(again);
  }
}

// ------------------------------------------------------------------ keyboard and pointer

function moveFocus(btn) {
  $$('.hit[tabindex="0"]', $("#columns")).forEach((b) => b.setAttribute("tabindex", "-1"));
  btn.setAttribute("tabindex", "0");
  btn.focus();
}

function trail(id, on) {
  $$(".hit", $("#columns")).forEach((b) => b.classList.toggle("trail", on && b.dataset.id === id));
}

export function cascadeKeys(ev) {
  if (!last) return;
  const btn = ev.target.closest && ev.target.closest(".hit");
  if (btn) {
    const col = Number(btn.dataset.col), row = Number(btn.dataset.row);
    let next = null;
    if (ev.key === "ArrowDown") next = $(`.hit[data-col="${col}"][data-row="${row + 1}"]`);
    if (ev.key === "ArrowUp") next = $(`.hit[data-col="${col}"][data-row="${row - 1}"]`);
    if (ev.key === "Home") next = $(`.hit[data-col="${col}"][data-row="0"]`);
    if (ev.key === "ArrowLeft" || ev.key === "ArrowRight") {
      const c = col + (ev.key === "ArrowLeft" ? -1 : 1);
      next = $(`.hit[data-col="${c}"][data-id="${CSS.escape(btn.dataset.id)}"]`) || $(`.hit[data-col="${c}"][data-row="${row}"]`)
        || $$(`.hit[data-col="${c}"]`).pop();
    }
    if (next) { ev.preventDefault(); moveFocus(next); return; }
  }
  const target = btn ? btn.dataset.id : selected;
  if (!target) return;
  if (/^[0-3]$/.test(ev.key)) {
    ev.preventDefault();
    if (target !== selected) select(target);
    judge(target, Number(ev.key), last.query);
  } else if (ev.key === "Delete" || ev.key === "Backspace") {
    ev.preventDefault();
    judge(target, null, last.query);
  }
}

document.addEventListener("click", (ev) => {
  const btn = ev.target.closest && ev.target.closest("#columns .hit, #columns .linkish");
  if (!btn) return;
  if (btn.classList.contains("hit")) moveFocus(btn);
  select(btn.dataset.id);
});
document.addEventListener("focusin", (ev) => { if (ev.target.classList && ev.target.classList.contains("hit")) trail(ev.target.dataset.id, true); });
document.addEventListener("focusout", (ev) => { if (ev.target.classList && ev.target.classList.contains("hit")) trail(ev.target.dataset.id, false); });
document.addEventListener("mouseover", (ev) => { const b = ev.target.closest && ev.target.closest(".hit"); if (b) trail(b.dataset.id, true); });
document.addEventListener("mouseout", (ev) => { const b = ev.target.closest && ev.target.closest(".hit"); if (b) trail(b.dataset.id, false); });

