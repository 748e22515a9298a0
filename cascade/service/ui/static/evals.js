// Evaluation: per-step nDCG@10, recall and latency of the last `cascade eval` of each profile of the index.
import { api, enc } from "./api.js";
import { h, clear, $, fmt, fixed } from "./dom.js";
import { state, showError } from "./app.js";
import { barChart } from "./charts.js";

export async function showEvals() {
  const out = clear($("#evals-out"));
  let got;
  try {
    got = await api(`/v1/indexes/${enc(state.index)}/evals`);
  } catch (err) {
    showError(err);
    return;
  }
  if (!got.evals.length) {
    out.append(h("p", { class: "empty" }, `No evaluation of ${state.index} yet. `, h("code", {}, `cascade eval --dataset ${state.index} --profile default`),
      " (or ", h("code", {}, "make demo"), ") saves one per profile, and it shows here."));
    return;
  }
  if (got.evals.length > 1) out.append(sideBySide(got.evals));
  for (const ev of got.evals) out.append(report(ev, got.config_version));
}

// Each profile's last step: what the profile as a whole buys and costs (like `cascade eval`'s closing table).
function sideBySide(evals) {
  const t = h("table", { class: "nums narrow" }, h("caption", {}, "Profiles side by side (last step)"),
    h("thead", {}, h("tr", {}, ...["profile", "dataset", "nDCG@10", "R@100", "p50 ms", "p95 ms", "cost / query"].map((c) => h("th", { scope: "col" }, c)))));
  const body = h("tbody");
  for (const ev of evals) {
    const s = ev.stages[ev.stages.length - 1] || {};
    const cost = Object.entries(s.cost_per_query || {}).map(([u, v]) => `${fmt(v, 1)} ${u}`).join(", ") || "–";
    body.append(h("tr", {}, h("th", { scope: "row" }, ev.profile), h("td", {}, `${ev.dataset} ${ev.split}`), h("td", {}, fixed(s["ndcg@10"], 4)),
      h("td", {}, fixed(s["recall@100"], 4)), h("td", {}, fixed(s.p50_ms, 1)), h("td", {}, fixed(s.p95_ms, 1)), h("td", {}, cost)));
  }
  t.append(body);
  return t;
}

function report(ev, version) {
  const steps = ev.stages;
  const names = steps.map((s) => s.name);
  const sec = h("section", { class: "evalcard", "aria-label": `evaluation of profile ${ev.profile}` });
  sec.append(h("h3", {}, `Profile ${ev.profile}`, h("span", { class: "muted small" },
    ` · ${ev.dataset} ${ev.split}, ${ev.queries} queries · ${ev.saved_at || ""}`)));
  if (ev.config_version !== version) {
    sec.append(h("p", { class: "flag warn" }, `Config version ${ev.config_version} was evaluated; the index serves ${version} now: re-run the evaluation.`));
  }
  if (ev.failed_queries) sec.append(h("p", { class: "flag bad" }, `${ev.failed_queries} queries failed (counted as 0).`));
  if (ev.command) sec.append(h("p", { class: "muted small" }, h("code", {}, ev.command)));
  const charts = h("div", { class: "charts" },
    barChart({ title: "nDCG@10 by step", labels: names, format: (v) => fixed(v, 2), series: [{ name: "nDCG@10", values: steps.map((s) => s["ndcg@10"]), cls: "s0" }], max: 1 }),
    barChart({ title: "Recall by step", labels: names, format: (v) => fixed(v, 2), series: [
      { name: "recall@30", values: steps.map((s) => s["recall@30"]), cls: "s1" },
      { name: "recall@100", values: steps.map((s) => s["recall@100"]), cls: "s0" }], max: 1 }),
    barChart({ title: "Latency by step (cumulative)", labels: names, format: (v) => fixed(v, v >= 100 ? 0 : 1),
      series: [{ name: "p50 ms", values: steps.map((s) => s.p50_ms), cls: "s0" }, { name: "p95 ms", values: steps.map((s) => s.p95_ms), cls: "s2" }] }));
  sec.append(charts);
  const cols = ["step", "kind", "nDCG@10", "R@30", "R@100", "MRR@10", "p50 ms", "p95 ms", "step p50 ms", "cost / query", "failed"];
  const t = h("table", { class: "nums" }, h("caption", {}, "Every step"), h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", { scope: "col" }, c)))));
  const body = h("tbody");
  for (const s of steps) {
    const cost = Object.entries(s.cost_per_query || {}).map(([u, v]) => `${fmt(v, 1)} ${u}`).join(", ") || "–";
    body.append(h("tr", {}, h("th", { scope: "row" }, s.name), h("td", {}, s.kind), h("td", {}, fixed(s["ndcg@10"], 4)),
      h("td", {}, fixed(s["recall@30"], 4)), h("td", {}, fixed(s["recall@100"], 4)), h("td", {}, fixed(s["mrr@10"], 4)),
      h("td", {}, fixed(s.p50_ms, 1)), h("td", {}, fixed(s.p95_ms, 1)), h("td", {}, fixed(s.step_p50_ms, 1)), h("td", {}, cost),
      h("td", {}, String(s.failed || 0))));
  }
  t.append(body);
  sec.append(t);
  return sec;
}
