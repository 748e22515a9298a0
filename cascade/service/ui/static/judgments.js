// Judgments: what has been judged for the index (the workbench's own and its dataset's), export and import,
// and how `cascade eval` and `cascade tune` read them.
import { api, enc } from "./api.js";
import { h, clear, $ } from "./dom.js";
import { state, showError, status, loadJudged } from "./app.js";

export async function showJudgments() {
  const out = clear($("#judgments-out"));
  const index = state.index;
  let got;
  try {
    got = await api(`/v1/indexes/${enc(index)}/judgments/queries?limit=100000`);
  } catch (err) {
    showError(err);
    return;
  }
  const ui = got.queries.filter((q) => q.source === "ui");
  const ds = got.queries.filter((q) => q.source !== "ui");
  out.append(h("p", {}, h("b", {}, String(got.ui_judgments)), ` judgments saved from the workbench for index ${index}, on ${ui.length} queries: `,
    h("code", {}, got.folder), " in the judgments folder (", h("code", {}, "CASCADE_JUDGMENTS_DIR"), ", default ", h("code", {}, ".cascade/judgments"), ")."));
  out.append(h("p", {}, "Evaluate or tune on them with the same commands as any dataset (the folder is one):"),
    h("pre", {}, `cascade eval --dataset .cascade/judgments/${index} --split ui --profile default\n` +
      `cascade tune --dataset .cascade/judgments/${index} --split ui --index ${index}`));

  const fileInput = h("input", { type: "file", id: "import-file", accept: ".jsonl,.json,.tsv,.txt,.qrels" });
  const mode = h("select", { id: "import-mode" }, h("option", { value: "merge" }, "merge into the saved ones"), h("option", { value: "replace" }, "replace the saved ones"));
  out.append(h("div", { class: "toolbar" },
    h("button", { type: "button", id: "export-jsonl", onclick: () => download(index, "jsonl") }, "Export JSON lines"),
    h("button", { type: "button", id: "export-tsv", onclick: () => download(index, "tsv") }, "Export qrels (TSV)"),
    h("span", { class: "sep" }),
    h("label", { for: "import-file" }, "Import a file"), fileInput,
    h("label", { for: "import-mode", class: "sr-only" }, "Import mode"), mode,
    h("button", { type: "button", id: "import-run", onclick: () => upload(index, fileInput, mode.value) }, "Import")));

  const table = h("table", { class: "nums judged" }, h("caption", {}, `Judged in the workbench (${ui.length} queries)`),
    h("thead", {}, h("tr", {}, ...["query", "query id", "judged", "relevant", ""].map((c) => h("th", { scope: "col" }, c)))));
  const body = h("tbody");
  for (const q of ui) {
    body.append(h("tr", {}, h("th", { scope: "row" }, q.query), h("td", {}, q.query_id), h("td", {}, String(q.judged)), h("td", {}, String(q.relevant)),
      h("td", {}, h("a", { href: `#/cascade?index=${enc(index)}&q=${enc(q.query)}` }, "open"))));
  }
  if (!ui.length) body.append(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "None yet: run a query in the Cascade view, select a document, press 0–3.")));
  table.append(body);
  out.append(table);
  if (ds.length) {
    const splits = {};
    for (const q of ds) splits[q.source] = (splits[q.source] || 0) + 1;
    out.append(h("p", { class: "muted" }, `Index ${index} also has its dataset's judgments: `,
      Object.entries(splits).map(([s, n]) => `${n} queries in ${s}`).join(", "),
      ". The query box suggests them; their labels show beside the workbench's (a workbench grade wins)."));
  }
}

async function download(index, format) {
  try {
    const text = await api(`/v1/indexes/${enc(index)}/judgments/export?format=${format}`, { text: true });
    const blob = new Blob([text], { type: format === "tsv" ? "text/tab-separated-values" : "application/x-ndjson" });
    const a = h("a", { href: URL.createObjectURL(blob), download: `${index}-judgments.${format}` });
    document.body.append(a);
    a.click();
    a.remove();
    status(`Exported ${index}-judgments.${format}.`);
  } catch (err) {
    showError(err);
  }
}

async function upload(index, input, mode) {
  const file = input.files && input.files[0];
  if (!file) {
    showError(new Error("choose a file to import first"));
    return;
  }
  try {
    const got = await api(`/v1/indexes/${enc(index)}/judgments/import?mode=${mode}`, { method: "POST", raw: await file.text() });
    showError(null);
    status(`Imported ${got.imported} judgments; ${got.ui_judgments} saved for ${index}.`);
    await loadJudged();
    await showJudgments();
  } catch (err) {
    showError(err);
  }
}
