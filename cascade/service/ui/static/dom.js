// Small DOM helpers: elements are built with h(), never from HTML strings (document text is untrusted).

export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.setAttribute("class", Array.isArray(v) ? v.filter(Boolean).join(" ") : v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

export function fmt(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e6) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 10 ** -digits || a >= 1e6)) return x.toExponential(2);
  return x.toFixed(digits);
}

// A measured value (score, metric) always with ``digits`` decimals, so 0 and 1 read as numbers of the same kind.
export function fixed(x, digits = 3) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Math.abs(x) >= 1e5 ? x.toExponential(2) : x.toFixed(digits);
}

export function ms(x) {
  if (x === null || x === undefined) return "–";
  return x >= 100 ? `${x.toFixed(0)} ms` : `${x.toFixed(1)} ms`;
}

export function pval(p) {
  if (p === null || p === undefined) return "–";
  return p < 1e-4 ? "<0.0001" : p.toFixed(4);
}

// The title of a document: its title field, else the first text field, else its id.
export function titleOf(fields, id) {
  if (!fields) return id;
  for (const k of ["title", "name", "headline"]) if (typeof fields[k] === "string" && fields[k].trim()) return fields[k];
  for (const v of Object.values(fields)) if (typeof v === "string" && v.trim()) return v.length > 160 ? v.slice(0, 160) + "…" : v;
  return id;
}

export const GRADES = [
  { grade: 0, name: "Not relevant" },
  { grade: 1, name: "Related" },
  { grade: 2, name: "Highly relevant" },
  { grade: 3, name: "Perfect" },
];

export function gradeChip(grade, source) {
  if (grade === null || grade === undefined) return null;
  const name = (GRADES.find((g) => g.grade === grade) || { name: `grade ${grade}` }).name;
  return h("span", { class: `grade g${Math.min(grade, 3)}`, title: `judged ${grade}: ${name}${source ? ` (${source})` : ""}` },
    h("span", { class: "sr-only" }, "judged "), String(grade));
}
