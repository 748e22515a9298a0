// Experiments: each experiment's live report from the experiments API (arms, impressions, the preference
// with its always-valid band, the tests and the verdict), refreshed every few seconds while in view.
import { api, enc } from "./api.js";
import { h, clear, $, fmt, pval } from "./dom.js";
import { state, showError } from "./app.js";
import { bandChart } from "./charts.js";

const EVERY_MS = 5000;
let timer = null;
let generation = 0; // bumped on every stop: a refresh still awaiting the service then schedules nothing

export function stopExperiments() {
  generation += 1;
  if (timer) clearTimeout(timer);
  timer = null;
}

export async function showExperiments() {
  stopExperiments();
  await refresh(generation);
}

function again(gen) {
  if (gen === generation && state.view === "experiments") timer = setTimeout(() => refresh(gen), EVERY_MS);
}

async function refresh(gen) {
  const out = $("#experiments-out");
  let list;
  try {
    list = (await api("/v1/experiments")).experiments;
    state.experiments = list;
  } catch (err) {
    if (gen === generation) showError(err);
    again(gen); // a restart or a blip: keep watching
    return;
  }
  const cards = [];
  for (const exp of list) {
    let rep = null, err = null;
    try {
      rep = await api(`/v1/experiments/${enc(exp.id)}`);
    } catch (e) {
      err = e;
    }
    cards.push(card(exp, rep, err));
  }
  if (gen !== generation || state.view !== "experiments") return;
  const focusedId = document.activeElement && document.activeElement.id;
  clear(out);
  if (!list.length) {
    out.append(h("p", { class: "empty" }, "No experiment is declared. Add one under ", h("code", {}, "experiments:"),
      " in an index's config (docs/experiments.md), then ", h("code", {}, "POST /v1/admin/reload"), "."));
  }
  const mine = list.filter((e) => e.index === state.index).length;
  if (mine < list.length && mine) out.append(h("p", { class: "muted small" }, `${mine} of ${list.length} experiments are on index ${state.index}.`));
  out.append(...cards);
  if (focusedId && document.getElementById(focusedId)) document.getElementById(focusedId).focus();
  $("#exp-updated").textContent = `· live, updated ${new Date().toLocaleTimeString()}`;
  again(gen);
}

function card(exp, rep, err) {
  const sec = h("section", { class: "expcard", "aria-label": `experiment ${exp.id}`, dataset: { experiment: exp.id } });
  sec.append(h("h3", {}, exp.id, h("span", { class: `pill st-${exp.status}` }, exp.status),
    h("span", { class: "muted small" }, ` ${exp.mode} · index ${exp.index} · arms ${exp.arms.join(", ")} · traffic ${Math.round(exp.traffic * 100)}%`)));
  if (exp.description) sec.append(h("p", { class: "muted" }, exp.description));
  if (err) {
    sec.append(h("p", { class: "flag warn" }, err.describe ? err.describe() : String(err)));
    return sec;
  }
  const progress = rep.sample_size ? Math.min(1, rep.served / rep.sample_size) : null;
  sec.append(h("p", { class: `verdict ${rep.winner ? "win" : rep.srm_flag ? "bad" : ""}` }, h("span", { class: "sr-only" }, "Verdict: "), rep.verdict));
  const served = h("dl", { class: "metrics small-metrics" },
    h("div", { class: "metric" }, h("dt", {}, "impressions"), h("dd", {}, h("span", { class: "big", dataset: { served: String(rep.served) } }, String(rep.served)),
      rep.sample_size ? h("span", { class: "muted small" }, ` of ${rep.sample_size} planned`) : null)),
    h("div", { class: "metric" }, h("dt", {}, "queries with clicks"), h("dd", {}, h("span", { class: "big" }, String(rep.clicked_queries)))),
    h("div", { class: "metric" }, h("dt", {}, "sample-ratio check"), h("dd", {}, h("span", { class: `big ${rep.srm_flag ? "bad" : ""}` }, `p ${pval(rep.srm_p)}`),
      h("span", { class: "muted small" }, rep.srm_flag ? " mismatch: do not trust" : " split as configured"))),
    h("div", { class: "metric" }, h("dt", {}, "looks"), h("dd", {}, h("span", { class: "big" }, String(rep.looks)))));
  sec.append(served);
  if (progress !== null) {
    const bar = h("progress", { max: "1", value: String(progress), "aria-label": `${Math.round(progress * 100)}% of the planned impressions` });
    sec.append(bar);
  }
  // Per-arm metrics.
  const interleaved = rep.mode !== "ab";
  const cols = interleaved ? ["arm", "team clicks", "first picks", "CTR", "clicks / query"] : ["arm", "served", "CTR", "clicks / query", "MRR", "abandonment"];
  const t = h("table", { class: "nums" }, h("caption", {}, "Arms"), h("thead", {}, h("tr", {}, ...cols.map((c) => h("th", { scope: "col" }, c)))));
  const body = h("tbody");
  for (const m of rep.arm_metrics) {
    const cells = interleaved ? [m.team_clicks ?? 0, m.first_picks ?? 0, fmt(m.ctr, 3), fmt(m.clicks_per_query, 3)]
      : [m.served, fmt(m.ctr, 3), fmt(m.clicks_per_query, 3), fmt(m.mrr, 3), fmt(m.abandonment, 3)];
    body.append(h("tr", {}, h("th", { scope: "row" }, m.arm), ...cells.map((c) => h("td", {}, String(c)))));
  }
  t.append(body);
  sec.append(t);
  const charts = h("div", { class: "charts" });
  if (interleaved) {
    const pt = h("table", { class: "nums" }, h("caption", {}, "Preference per query (Δ > 0: the first arm is preferred)"),
      h("thead", {}, h("tr", {}, ...["pair", "wins / losses / ties", "Δ [95% CI]", "win rate [always-valid]", "p fixed", "p any-time", "winner"].map((c) => h("th", { scope: "col" }, c)))));
    const pb = h("tbody");
    for (const r of rep.pairs) {
      pb.append(h("tr", { class: r.significant ? "sig" : "" }, h("th", { scope: "row" }, `${r.a} vs ${r.b}`), h("td", {}, `${r.wins} / ${r.losses} / ${r.ties}`),
        h("td", {}, `${fmt(r.delta, 3)} [${fmt(r.delta_low, 3)}, ${fmt(r.delta_high, 3)}]`),
        h("td", {}, `${fmt(r.win_rate, 3)} [${fmt(r.win_rate_low, 3)}, ${fmt(r.win_rate_high, 3)}]`),
        h("td", {}, pval(r.p_fixed)), h("td", {}, pval(r.p_always_valid)), h("td", {}, r.winner || "–")));
      const key = `${r.a}|${r.b}`;
      const xs = rep.series.map((p) => p.served);
      charts.append(bandChart({ title: `Preference: ${r.a} over ${r.b} (always-valid band)`, xs,
        ys: rep.series.map((p) => p[`pref:${key}`]), lows: rep.series.map((p) => p[`pref_low:${key}`]),
        highs: rep.series.map((p) => p[`pref_high:${key}`]), xLabel: "impressions", yLabel: "(wins − losses) / decided" }));
    }
    pt.append(pb);
    sec.append(pt);
  } else {
    const at = h("table", { class: "nums" }, h("caption", {}, "Treatment against control"),
      h("thead", {}, h("tr", {}, ...["arms", "metric", "difference [95% CI]", "always-valid band", "p fixed", "p any-time", "winner"].map((c) => h("th", { scope: "col" }, c)))));
    const ab = h("tbody");
    for (const r of rep.ab) {
      ab.append(h("tr", { class: r.significant ? "sig" : "" }, h("th", { scope: "row" }, `${r.treatment} vs ${r.control}`), h("td", {}, r.metric),
        h("td", {}, `${fmt(r.difference, 4)} [${fmt(r.ci_low, 4)}, ${fmt(r.ci_high, 4)}]`), h("td", {}, `[${fmt(r.cs_low, 4)}, ${fmt(r.cs_high, 4)}]`),
        h("td", {}, pval(r.p_fixed)), h("td", {}, pval(r.p_always_valid)), h("td", {}, r.winner || "–")));
      const xs = rep.series.map((p) => p.served);
      charts.append(bandChart({ title: `${r.treatment} − ${r.control}, ${r.metric} (always-valid band)`, xs,
        ys: rep.series.map((p) => p[`diff:${r.treatment}`]), lows: rep.series.map((p) => p[`cs_low:${r.treatment}`]),
        highs: rep.series.map((p) => p[`cs_high:${r.treatment}`]), xLabel: "impressions", yLabel: `difference in ${r.metric}` }));
    }
    at.append(ab);
    sec.append(at);
  }
  sec.append(charts);
  return sec;
}
