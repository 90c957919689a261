// Bettong's monitoring page: polls /metrics.json every second, keeps the last minutes of
// samples and draws them with uPlot. Each chart's element gets data-max (the largest value
// plotted) and data-points, and each tile data-value, so a test can read what is shown.
"use strict";

const KEEP = 600; // samples kept: 10 minutes at one a second
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
let samples = [];
let charts = {};

const fmt = (v) => {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + " G";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + " M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + " k";
  return (Math.round(v * 10) / 10).toString();
};
const bytes = (v) => fmt(v) + "B";
const us = (v) => (v >= 1000 ? (v / 1000).toFixed(v >= 1e5 ? 0 : 2) + " ms" : Math.round(v) + " µs");

// The series of one chart: [label, function of a sample giving the value, dashed?].
function chartSeries(cores) {
  const perCore = (label, f, dash) =>
    Array.from({ length: cores }, (_, i) => [label + " " + i, (s) => f(s.per_core[i]), dash]);
  return {
    "chart-throughput": [
      ["msgs/s in", (s) => s.total.per_s.frames_in, false],
      ...perCore("core", (c) => c.per_s.frames_in, true),
    ],
    "chart-output": [
      ["lines/s out", (s) => s.total.per_s.outputs, false],
      ...perCore("core", (c) => c.per_s.outputs, true),
    ],
    "chart-latency": [
      ["p50", (s) => s.total.hist_us.latency.p50, false],
      ["p99", (s) => s.total.hist_us.latency.p99, false],
      ["p99.9", (s) => s.total.hist_us.latency.p999, false],
      ...perCore("p99 core", (c) => c.hist_us.latency.p99, true),
    ],
    "chart-connections": [
      ["total", (s) => s.total.now.connections_open, false],
      ...perCore("core", (c) => c.now.connections_open, true),
    ],
    "chart-keys": [
      ["total", (s) => s.total.now.keys, false],
      ...perCore("core", (c) => c.now.keys, true),
    ],
    "chart-sink": [
      ["cores connected", (s) => s.total.now.sink_connected, false],
      ["checkpoints committed", (s) => s.checkpoints.committed, false],
      ["checkpoints failed", (s) => s.checkpoints.failed, false],
    ],
  };
}

// Axis and legend formats by chart: latencies are microseconds.
const FORMATS = { "chart-latency": us };

function makeCharts(cores) {
  const defs = chartSeries(cores);
  for (const [id, series] of Object.entries(defs)) {
    const f = FORMATS[id] || fmt;
    const el = document.getElementById(id);
    el.innerHTML = "";
    const opts = {
      width: Math.max(el.clientWidth, 500),
      height: 220,
      series: [
        {},
        ...series.map(([label, , dash], i) => ({
          label,
          stroke: COLORS[i % COLORS.length],
          width: dash ? 1 : 2,
          dash: dash ? [5, 4] : undefined,
          value: (u, v) => (v === null ? "–" : f(v)),
        })),
      ],
      axes: [{}, { values: (u, vals) => vals.map(f), size: 70 }],
      scales: { y: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] } },
    };
    charts[id] = { series, plot: new uPlot(opts, [[], ...series.map(() => [])], el), el };
  }
}

function draw() {
  if (samples.length === 0) return;
  const cores = samples[samples.length - 1].cores;
  if (!charts.cores || charts.cores !== cores) {
    charts = {};
    makeCharts(cores);
    charts.cores = cores;
  }
  const xs = samples.map((s) => s.unix_ms / 1000);
  for (const c of Object.values(charts)) {
    if (!c.plot) continue;
    const ys = c.series.map(([, f]) => samples.map((s) => {
      const v = f(s);
      return v === undefined ? null : v;
    }));
    c.plot.setData([xs, ...ys]);
    const max = Math.max(0, ...ys.flat().filter((v) => v !== null));
    c.el.dataset.max = String(max);
    c.el.dataset.points = String(xs.length);
  }
}

function setTile(id, text, value, bad) {
  const el = document.getElementById(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
  el.classList.toggle("bad", !!bad);
}

function showLatest() {
  const s = samples[samples.length - 1];
  const t = s.total;
  const lat = t.hist_us.latency;
  setTile("in-rate", fmt(t.per_s.frames_in), t.per_s.frames_in);
  setTile("out-rate", fmt(t.per_s.outputs), t.per_s.outputs);
  setTile("latency", lat.count ? `${us(lat.p50)} / ${us(lat.p99)} / ${us(lat.p999)}` : "no output", lat.p99);
  setTile("connections", String(t.now.connections_open), t.now.connections_open);
  setTile("keys", `${fmt(t.now.keys)} / ${bytes(t.now.state_bytes)}`, t.now.keys);
  const down = s.cores - t.now.sink_connected;
  setTile("sink", `${t.now.sink_connected}/${s.cores} connected` +
    (t.now.sink_bytes_at_risk ? `, ${bytes(t.now.sink_bytes_at_risk)} at risk` : "") +
    (t.now.sink_bytes_dropped ? `, ${bytes(t.now.sink_bytes_dropped)} dropped` : ""),
    t.now.sink_connected, down > 0 || t.now.sink_bytes_dropped > 0);
  const c = s.checkpoints;
  setTile("checkpoints", c.committed || c.failed
    ? `${c.committed} committed, ${c.failed} failed; last pause ${us(c.last_pause_us)}`
    : "none", c.committed, c.failed > 0);
  document.getElementById("cores").textContent = `${s.cores} cores`;
  const body = document.querySelector("#per-core tbody");
  body.innerHTML = "";
  s.per_core.forEach((p, i) => {
    const l = p.hist_us.latency;
    const cells = [i, fmt(p.per_s.frames_in), fmt(p.per_s.records_routed), fmt(p.per_s.outputs),
      l.p50, l.p99, l.p999, p.now.connections_open, fmt(p.now.keys),
      p.now.sink_connected ? "up" : "down", fmt(p.per_s.ring_full_stalls),
      us(p.now.checkpoint_pause_us_max)];
    const tr = document.createElement("tr");
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    }
    body.appendChild(tr);
  });
}

function add(sample) {
  if (typeof sample.unix_ms !== "number") return; // "{}": no sample taken yet
  if (samples.length && sample.unix_ms <= samples[samples.length - 1].unix_ms) return;
  samples.push(sample);
  if (samples.length > KEEP) samples.splice(0, samples.length - KEEP);
}

function status(ok, text) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("down", !ok);
}

async function poll(path) {
  try {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    const body = await r.json();
    (Array.isArray(body) ? body : [body]).forEach(add);
    if (samples.length) {
      draw();
      showLatest();
      status(true, "updated " + new Date(samples[samples.length - 1].unix_ms).toLocaleTimeString());
    }
  } catch (e) {
    status(false, "cannot reach the server: " + e.message);
  }
}

poll("/metrics.json?history").then(() => setInterval(() => poll("/metrics.json"), 1000));
