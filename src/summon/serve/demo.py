"""The demo page served at ``GET /`` by ``summon serve``: one self-contained HTML file (inline CSS and script, no
external assets, works offline).

* **One input**: type or paste a text, move the budget slider (from the cheapest operating point to the full
  model), and see the label, the stage that answered, its cost and FLOPs, and the latency (measured by the page
  and the server's ``x-total-time``).
* **Batch**: one input per line, answered in one request; the page draws the calibration's accuracy-vs-cost
  curve (accuracy on the calibration rows when it had gold labels, else agreement with the full model) as an
  inline SVG, marks the operating point the slider selects, and the batch's realised mean cost.

It talks to ``GET /v1/models``, ``GET /v1/info`` and ``POST /v1/predict`` only. For scripted checks (a headless
browser), ``/?text=...&budget=...&model=...`` fills the form and predicts on load; the answer's fields are
also written as ``data-*`` attributes of ``#result``.
"""

from __future__ import annotations

DEMO_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>summon demo</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem 1.5rem; color: #222; }
  h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 1.4rem 0 .4rem; }
  textarea { width: 100%; box-sizing: border-box; font: inherit; padding: .4rem; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; margin: .6rem 0; }
  .row { display: flex; gap: 1rem; align-items: center; flex-wrap: wrap; margin: .4rem 0; }
  button { font: inherit; padding: .3rem 1rem; }
  #result { min-height: 3rem; padding: .5rem; background: #f5f5f7; border-radius: 6px; }
  .label { font-size: 1.3rem; font-weight: 600; } .muted { color: #666; } .error { color: #b00020; }
  table { border-collapse: collapse; width: 100%; font-size: .9rem; }
  td, th { border-bottom: 1px solid #ddd; padding: .2rem .4rem; text-align: left; }
  svg { background: #fff; border: 1px solid #ddd; border-radius: 6px; }
</style>
</head>
<body>
<h1>summon</h1>
<p class="muted">Easy inputs are answered cheaply; the budget caps the mean cost (a fraction of the full model).</p>
<form id="form">
  <div class="row">
    <label>model <select id="model" name="model"></select></label>
    <span id="kind" class="muted"></span>
  </div>
  <label for="text">text</label>
  <textarea id="text" name="text" rows="3" placeholder="type or paste a text">a gripping, beautifully acted film</textarea>
  <div class="row">
    <label for="budget">budget</label>
    <input id="budget" name="budget" type="range" min="0" max="1" step="0.01" value="1">
    <output id="budget-value" for="budget">1.00</output>
    <button id="predict" type="submit">Predict</button>
  </div>
</form>
<div id="result" aria-live="polite"></div>

<h2>Batch</h2>
<textarea id="batch" rows="5" placeholder="one input per line">a gem
a mess from start to finish
not bad at all
dull and far too long</textarea>
<div class="row"><button id="run-batch" type="button">Run batch</button> <span id="batch-summary" class="muted"></span></div>
<svg id="curve" width="560" height="300" viewBox="0 0 560 300" role="img" aria-label="accuracy against cost"></svg>
<table id="batch-table"></table>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
let info = {};

function fmt(x, digits) { return (x === null || x === undefined) ? "n/a" : Number(x).toFixed(digits); }
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }

function current() { return info[$("model").value] || {}; }

function knob() {
  const m = current();
  return m.calibrated ? {budget: Number($("budget").value)} : undefined;
}

async function predict(inputs) {
  const started = performance.now();
  const body = {model: $("model").value, inputs: inputs};
  const k = knob();
  if (k) body.knob = k;
  const resp = await fetch("/v1/predict", {method: "POST", headers: {"content-type": "application/json"},
                                           body: JSON.stringify(body)});
  const answer = await resp.json();
  answer.client_ms = performance.now() - started;
  answer.server_ms = Number(resp.headers.get("x-total-time"));
  if (!resp.ok) throw new Error(resp.status + ": " + answer.error);
  return answer;
}

function setupSlider() {
  const m = current();
  const slider = $("budget");
  slider.disabled = !m.calibrated;
  $("kind").textContent = m.kind ? m.kind + (m.num_stages ? ", " + m.num_stages + " stages" : "") +
    (m.calibrated ? "" : " (no knob)") : "";
  if (m.calibrated) {
    const cheapest = Math.min(...m.operating_points.map((p) => p.cost));
    slider.min = Math.ceil(cheapest * 100 - 1e-9) / 100;
    if (Number(slider.value) < Number(slider.min)) slider.value = slider.min;
  }
  $("budget-value").textContent = fmt(slider.value, 2);
  drawCurve();
}

async function runOne(event) {
  if (event) event.preventDefault();
  const out = $("result");
  out.textContent = "...";
  try {
    const answer = await predict([$("text").value]);
    const row = answer.predictions[0];
    const stages = current().num_stages;
    out.innerHTML = '<span class="label">' + esc(row.label) + "</span> " +
      '<span class="muted">p=' + fmt(Math.max(...row.probs), 3) + "</span><br>" +
      "stage " + (row.stage === undefined ? "n/a" : (row.stage + 1) + (stages ? " of " + stages : "")) +
      " &middot; cost " + fmt(row.cost, 3) + " of the full model" +
      (row.flops !== undefined ? " &middot; " + Number(row.flops).toExponential(2) + " FLOPs" : "") +
      " &middot; latency " + fmt(answer.client_ms, 1) + " ms (server " + fmt(answer.server_ms, 1) + " ms)" +
      (row.degraded ? ' &middot; <span class="error">degraded</span>' : "");
    Object.assign(out.dataset, {label: row.label, stage: row.stage, cost: row.cost, latency: answer.client_ms});
  } catch (err) {
    out.innerHTML = '<span class="error">' + esc(err.message) + "</span>";
    out.dataset.error = err.message;
  }
}

async function runBatch() {
  const lines = $("batch").value.split("\\n").map((s) => s.trim()).filter((s) => s);
  const table = $("batch-table");
  try {
    const answer = await predict(lines);
    const rows = answer.predictions;
    const mean = rows.length && rows[0].cost !== undefined ? rows.reduce((a, r) => a + r.cost, 0) / rows.length : null;
    $("batch-summary").textContent = rows.length + " inputs in " + fmt(answer.client_ms, 1) + " ms; mean cost " +
      fmt(mean, 3);
    table.innerHTML = "<tr><th>input</th><th>label</th><th>stage</th><th>cost</th></tr>" + rows.map((r, i) =>
      "<tr><td>" + esc(lines[i]) + "</td><td>" + esc(r.label) + "</td><td>" +
      (r.stage === undefined ? "n/a" : r.stage + 1) + "</td><td>" + fmt(r.cost, 3) + "</td></tr>").join("");
    drawCurve(mean);
  } catch (err) {
    $("batch-summary").innerHTML = '<span class="error">' + esc(err.message) + "</span>";
  }
}

function drawCurve(realised) {
  const svg = $("curve");
  const m = current();
  const W = 560, H = 300, L = 50, R = 15, T = 15, B = 40;
  if (!m.calibrated) {
    svg.innerHTML = '<text x="20" y="40">no calibration: this model answers every input in full</text>';
    return;
  }
  const useAcc = m.operating_points.every((p) => p.accuracy !== null && p.accuracy !== undefined);
  const pts = m.operating_points.map((p) => ({x: p.cost, y: useAcc ? p.accuracy : 1 - p.disagreement}))
    .sort((a, b) => a.x - b.x);
  const ys = pts.map((p) => p.y);
  const y0 = Math.max(0, Math.min(...ys) - 0.02), y1 = Math.min(1, Math.max(...ys) + 0.02) || 1;
  const sx = (x) => L + x * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / ((y1 - y0) || 1)) * (H - T - B);
  let s = '<line x1="' + L + '" y1="' + (H - B) + '" x2="' + (W - R) + '" y2="' + (H - B) + '" stroke="#888"/>' +
    '<line x1="' + L + '" y1="' + T + '" x2="' + L + '" y2="' + (H - B) + '" stroke="#888"/>';
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    s += '<text x="' + sx(t) + '" y="' + (H - B + 16) + '" font-size="11" text-anchor="middle">' + t + "</text>";
  }
  for (const t of [y0, (y0 + y1) / 2, y1]) {
    s += '<text x="' + (L - 6) + '" y="' + (sy(t) + 4) + '" font-size="11" text-anchor="end">' + fmt(t, 3) + "</text>";
  }
  s += '<text x="' + ((W + L) / 2) + '" y="' + (H - 6) + '" font-size="12" text-anchor="middle">cost (fraction of the full model)</text>';
  s += '<text x="12" y="' + (T + (H - B) / 2) + '" font-size="12" transform="rotate(-90 12 ' + (T + (H - B) / 2) +
    ')" text-anchor="middle">' + (useAcc ? "accuracy" : "agreement with the full model") + "</text>";
  s += '<polyline id="curve-line" fill="none" stroke="#3060c0" stroke-width="2" points="' +
    pts.map((p) => sx(p.x).toFixed(1) + "," + sy(p.y).toFixed(1)).join(" ") + '"/>';
  const budget = Number($("budget").value);
  const chosen = pts.filter((p) => p.x <= budget + 1e-9).pop() || pts[0];
  s += '<circle id="chosen" cx="' + sx(chosen.x) + '" cy="' + sy(chosen.y) + '" r="5" fill="#e07020"><title>budget ' +
    fmt(budget, 2) + ": cost " + fmt(chosen.x, 3) + ", " + fmt(chosen.y, 3) + "</title></circle>";
  if (realised !== undefined && realised !== null) {
    s += '<line id="realised" x1="' + sx(realised) + '" y1="' + T + '" x2="' + sx(realised) + '" y2="' + (H - B) +
      '" stroke="#20a060" stroke-dasharray="4 3"><title>batch mean cost ' + fmt(realised, 3) + "</title></line>";
  }
  svg.innerHTML = s;
}

async function start() {
  const [models, details] = await Promise.all([fetch("/v1/models").then((r) => r.json()),
                                               fetch("/v1/info").then((r) => r.json())]);
  info = details.models;
  const select = $("model");
  select.innerHTML = models.models.map((m) => "<option>" + esc(m.name) + "</option>").join("");
  const params = new URLSearchParams(location.search);
  if (params.get("model")) select.value = params.get("model");
  if (params.get("budget")) $("budget").value = params.get("budget");
  setupSlider();
  if (params.get("text")) {
    $("text").value = params.get("text");
    await runOne();
  }
}

$("form").addEventListener("submit", runOne);
$("model").addEventListener("change", setupSlider);
$("budget").addEventListener("input", () => { $("budget-value").textContent = fmt($("budget").value, 2); drawCurve(); });
$("run-batch").addEventListener("click", runBatch);
start().catch((err) => { $("result").innerHTML = '<span class="error">' + esc(err.message) + "</span>"; });
</script>
</body>
</html>
"""
