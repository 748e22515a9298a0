// Bar and line charts as plain SVG (a few dozen lines; no chart library to vendor). Every chart has a
// <title> and <desc> for screen readers, and the numbers it draws are also in a table next to it.
import { h, fmt } from "./dom.js";

const W = 460;
const PAD = { top: 28, right: 12, bottom: 64, left: 46 };

function frame(title, height) {
  const svg = h("svg:svg", { viewBox: `0 0 ${W} ${height}`, class: "chart", role: "img", "aria-label": title });
  svg.append(h("svg:title", {}, title));
  svg.append(h("svg:text", { x: PAD.left, y: 16, class: "chart-title" }, title));
  return svg;
}

function yAxis(svg, max, height, format) {
  const inner = height - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const y = PAD.top + inner - (inner * i) / 4;
    svg.append(h("svg:line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: i ? "grid" : "axis" }));
    svg.append(h("svg:text", { x: PAD.left - 6, y: y + 4, class: "tick", "text-anchor": "end" }, format(v)));
  }
}

// series: [{name, values: [..], cls}] drawn as grouped bars over labels.
export function barChart({ title, labels, series, format = (v) => fmt(v, 2), max = null, height = 250 }) {
  const svg = frame(title, height);
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
  const top = max ?? Math.max(1e-9, ...all) * 1.12;
  yAxis(svg, top, height, format);
  const inner = height - PAD.top - PAD.bottom;
  const band = (W - PAD.left - PAD.right) / Math.max(labels.length, 1);
  const bw = Math.min(34, (band * 0.8) / series.length);
  labels.forEach((label, i) => {
    const x0 = PAD.left + band * i + (band - bw * series.length) / 2;
    series.forEach((s, j) => {
      const v = s.values[i];
      if (v === null || v === undefined || Number.isNaN(v)) return;
      const bh = (inner * Math.min(v, top)) / top;
      const x = x0 + bw * j;
      const rect = h("svg:rect", { x, y: PAD.top + inner - bh, width: bw - 2, height: Math.max(bh, 0.5), class: `bar ${s.cls || ""}` });
      rect.append(h("svg:title", {}, `${label} · ${s.name}: ${format(v)}`));
      svg.append(rect);
      if (series.length === 1 || bw > 22)
        svg.append(h("svg:text", { x: x + (bw - 2) / 2, y: PAD.top + inner - bh - 4, class: "value", "text-anchor": "middle" }, format(v)));
    });
    const lx = PAD.left + band * i + band / 2;
    svg.append(h("svg:text", { x: lx, y: height - PAD.bottom + 14, class: "tick", "text-anchor": "end",
      transform: `rotate(-30 ${lx} ${height - PAD.bottom + 14})` }, label));
  });
  if (series.length > 1) {
    series.forEach((s, j) => {
      const x = PAD.left + j * 110;
      svg.append(h("svg:rect", { x, y: height - 14, width: 10, height: 10, class: `bar ${s.cls || ""}` }));
      svg.append(h("svg:text", { x: x + 14, y: height - 5, class: "tick" }, s.name));
    });
  }
  return svg;
}

// One line with its band (e.g. a preference and its always-valid confidence sequence) over x.
export function bandChart({ title, xs, ys, lows, highs, xLabel, yLabel, height = 260 }) {
  const svg = frame(title, height);
  const inner = height - PAD.top - PAD.bottom + 24;
  const values = [...ys, ...lows, ...highs].filter((v) => Number.isFinite(v));
  let lo = Math.min(-0.1, ...values), hi = Math.max(0.1, ...values);
  lo = Math.max(lo, -1); hi = Math.min(hi, 1);
  const xmax = Math.max(1, ...xs);
  const X = (x) => PAD.left + ((W - PAD.left - PAD.right) * x) / xmax;
  const Y = (y) => PAD.top + inner - (inner * (y - lo)) / (hi - lo || 1);
  for (const v of [lo, (lo + hi) / 2, hi, 0]) {
    svg.append(h("svg:line", { x1: PAD.left, x2: W - PAD.right, y1: Y(v), y2: Y(v), class: v === 0 ? "axis" : "grid" }));
    svg.append(h("svg:text", { x: PAD.left - 6, y: Y(v) + 4, class: "tick", "text-anchor": "end" }, fmt(v, 2)));
  }
  const pts = xs.map((x, i) => [x, ys[i], lows[i], highs[i]]).filter((p) => [p[1], p[2], p[3]].every(Number.isFinite));
  if (pts.length) {
    const upper = pts.map((p) => `${X(p[0])},${Y(p[3])}`).join(" ");
    const lower = pts.slice().reverse().map((p) => `${X(p[0])},${Y(p[2])}`).join(" ");
    svg.append(h("svg:polygon", { points: `${upper} ${lower}`, class: "band" }));
    svg.append(h("svg:polyline", { points: pts.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), class: "line" }));
    const last = pts[pts.length - 1];
    svg.append(h("svg:circle", { cx: X(last[0]), cy: Y(last[1]), r: 3.5, class: "dot" }));
  }
  svg.append(h("svg:text", { x: W - PAD.right, y: height - 8, class: "tick", "text-anchor": "end" }, `${xLabel} (0–${xmax})`));
  svg.append(h("svg:text", { x: PAD.left, y: height - 8, class: "tick" }, yLabel));
  return svg;
}
