// mygpt2 playground: plain JavaScript, no libraries. Talks to the server's /v1 and /api routes.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { info: null, text: "", analysed: {}, attention: null, selectedHead: null };

// ------------------------------------------------------------------------------ requests
function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = localStorage.getItem("mygpt2-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function failure(response) {
  // The server answers errors in OpenAI's shape: {"error": {"message", ...}}.
  try {
    const body = await response.json();
    if (body.error && body.error.message) return new Error(body.error.message);
  } catch (e) { /* not JSON */ }
  return new Error(`HTTP ${response.status}`);
}

async function api(path, body) {
  const init = body === undefined
    ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const response = await fetch(path, init);
  if (response.status === 401) showKeyBox();
  if (!response.ok) throw await failure(response);
  return response.json();
}

function showKeyBox() {
  const box = $("#key-box");
  box.hidden = false;
  const input = $("#api-key");
  input.value = localStorage.getItem("mygpt2-api-key") || "";
  input.onchange = () => {
    localStorage.setItem("mygpt2-api-key", input.value);
    loadInfo();
  };
}

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    state.info = info;
    const millions = (info.parameters / 1e6).toFixed(info.parameters < 1e7 ? 2 : 1);
    $("#model-info").textContent =
      `${info.model} · ${millions}M parameters · ${info.n_layers} layers × ${info.n_heads} heads · ` +
      `T=${info.T} · tokenizer ${info.tokenizer.split("/").pop()}`;
    if (!$("#run-dir").value) $("#run-dir").value = info.out_dir || "";
  } catch (e) {
    $("#model-info").textContent = e.message;
  }
}

// ------------------------------------------------------------------------------ tabs
function currentText() {
  const out = $("#output").textContent;
  return out || $("#prompt").value;
}

function show(view) {
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.view === view);
  }
  for (const s of document.querySelectorAll(".view")) {
    s.classList.toggle("active", s.id === "view-" + view);
  }
  const text = currentText();
  if (view === "tokens" && state.analysed.tokens !== text) loadTokens(text);
  if (view === "attention" && state.analysed.attention !== text) loadAttention(text);
  if (view === "lens" && state.analysed.lens !== text) loadLens(text);
  if (view === "training" && !training.timer && $("#run-dir").value) watch();
}

// ------------------------------------------------------------------------------ generate
let controller = null;

function numberOf(id) {
  const raw = $("#" + id).value.trim();
  return raw === "" ? null : Number(raw);
}

async function generate() {
  const prompt = $("#prompt").value;
  const status = $("#gen-status");
  const body = {
    prompt,
    max_tokens: numberOf("max_tokens"),
    temperature: numberOf("temperature"),
    top_p: numberOf("top_p"),
    seed: numberOf("seed"),
    stream: true,
    logprobs: 0,
    stream_options: { include_usage: true },
  };
  const topK = numberOf("top_k");
  if (topK) body.top_k = topK;
  try {
    const steer = steerEntries();
    if (steer.length) body.steer = steer;
  } catch (e) {
    setStatus(status, e.message, true);
    return;
  }
  $("#output .prompt").textContent = prompt;
  const out = $("#output .generated");
  out.textContent = "";
  state.analysed = {};
  controller = new AbortController();
  $("#generate").disabled = true;
  $("#stop").disabled = false;
  setStatus(status, "waiting for the model…");
  const t0 = performance.now();
  let tokens = 0;
  let finish = null;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
    });
    if (response.status === 401) showKeyBox();
    if (!response.ok) throw await failure(response);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices) {
          out.textContent += choice.text;
          if (choice.logprobs) tokens += choice.logprobs.tokens.length;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        const seconds = (performance.now() - t0) / 1000;
        setStatus(status, `${tokens} tokens · ${(tokens / seconds).toFixed(1)} tokens/s`);
      }
    }
    const seconds = (performance.now() - t0) / 1000;
    const why = finish === "stop" ? "stopped at the end of text" : "reached max tokens";
    setStatus(status, `${tokens} tokens in ${seconds.toFixed(2)} s (${(tokens / seconds).toFixed(1)} tokens/s); ${why}`);
  } catch (e) {
    if (e.name === "AbortError") setStatus(status, `stopped after ${tokens} tokens`);
    else setStatus(status, e.message, true);
  } finally {
    $("#generate").disabled = false;
    $("#stop").disabled = true;
    controller = null;
  }
}

// ------------------------------------------------------------------------------ tokens
function shown(text) {
  return text.replace(/\n/g, "↵\n").replace(/\t/g, "→\t");
}

function shade(token, index, mode) {
  if (mode === "bounds") return index % 2 ? "#dbe7fb" : "#fbe9d4";
  if (token.loss === undefined) return "#eceff3";
  if (mode === "prob") {
    const p = Math.exp(-token.loss);
    return `rgba(47, 111, 223, ${0.08 + 0.75 * p})`;
  }
  const x = Math.min(token.loss / 8, 1);  // 0 nats: green, 8 nats and more: red
  return `hsl(${Math.round(120 - 120 * x)}, 75%, ${88 - 18 * x}%)`;
}

async function loadTokens(text) {
  const status = $("#tokens-status");
  setStatus(status, "analysing…");
  try {
    const view = await api("/api/tokens", { text });
    state.tokens = view.tokens;
    state.analysed.tokens = text;
    renderTokens();
    const losses = view.tokens.filter((t) => t.loss !== undefined).map((t) => t.loss);
    const mean = losses.length ? losses.reduce((a, b) => a + b, 0) / losses.length : NaN;
    setStatus(status, `${view.tokens.length} tokens · mean loss ${mean.toFixed(3)} nats/token` +
      (view.truncated ? ` · only the first ${view.tokens.length} tokens (the context length)` : ""));
  } catch (e) {
    setStatus(status, e.message, true);
  }
}

function renderTokens() {
  const mode = document.querySelector("input[name=shade]:checked").value;
  const box = $("#token-text");
  box.textContent = "";
  state.tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = t.text ? "tok" : "tok partial";
    span.textContent = t.text ? shown(t.text) : "·";  // a byte whose character ends later
    span.style.background = shade(t, i, mode);
    span.dataset.index = i;
    box.appendChild(span);
  });
}

function tokenTip(i) {
  const t = state.tokens[i];
  let text = `#${i}  id ${t.id}  ${t.bytes ? "bytes " + t.bytes : JSON.stringify(t.text)}`;
  if (t.loss !== undefined) text += `\nloss ${t.loss.toFixed(3)} nats · p ${Math.exp(-t.loss).toPrecision(3)}`;
  return text;
}

function selectToken(i) {
  for (const s of document.querySelectorAll(".tok.selected")) s.classList.remove("selected");
  document.querySelector(`.tok[data-index="${i}"]`).classList.add("selected");
  const t = state.tokens[i];
  const panel = $("#token-detail");
  panel.textContent = "";
  const title = document.createElement("h3");
  title.textContent = `position ${i}: ${JSON.stringify(t.text)} (id ${t.id})`;
  panel.appendChild(title);
  if (!t.top) {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = "The first token has no prediction: nothing comes before it.";
    panel.appendChild(p);
    return;
  }
  const p = document.createElement("p");
  p.textContent = `loss ${t.loss.toFixed(3)} nats; the model's top 5 here:`;
  panel.appendChild(p);
  for (const alt of t.top) {
    const row = document.createElement("div");
    row.className = "alt" + (alt.id === t.id ? " actual" : "");
    const name = document.createElement("code");
    name.textContent = JSON.stringify(alt.text);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.max(1, 100 * alt.prob)}%`;
    const prob = document.createElement("span");
    prob.className = "p";
    prob.textContent = alt.prob.toFixed(3);
    row.append(name, bar, prob);
    panel.appendChild(row);
  }
}

// ------------------------------------------------------------------------------ attention
function patternOf(view, layer, head) {
  const n = view.tokens.length;
  const start = (layer * view.heads + head) * n * n;
  return view.bytes.subarray(start, start + n * n);
}

function drawPattern(canvas, view, layer, head, cell) {
  const n = view.tokens.length;
  canvas.width = n * cell;
  canvas.height = n * cell;
  const ctx = canvas.getContext("2d");
  const pattern = patternOf(view, layer, head);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let q = 0; q < n; q++) {
    for (let k = 0; k <= q; k++) {
      const w = pattern[q * n + k] / 255;
      if (w === 0) continue;
      ctx.fillStyle = `rgba(24, 70, 170, ${Math.sqrt(w)})`;  // √weight: small weights stay visible
      ctx.fillRect(k * cell, q * cell, cell, cell);
    }
  }
}

async function loadAttention(text) {
  const status = $("#attention-status");
  setStatus(status, "analysing…");
  try {
    const view = await api("/api/attention", { text });
    view.bytes = Uint8Array.from(atob(view.patterns), (c) => c.charCodeAt(0));
    state.attention = view;
    state.analysed.attention = text;
    renderAttentionGrid(view);
    setStatus(status, `${view.layers} layers × ${view.heads} heads over ${view.tokens.length} tokens` +
      (view.truncated ? " (the first ones of the text)" : "") + "; rows: queries, columns: keys; shade: √weight");
    selectHead(state.selectedHead ? state.selectedHead[0] : 0, state.selectedHead ? state.selectedHead[1] : 0);
  } catch (e) {
    setStatus(status, e.message, true);
  }
}

function renderAttentionGrid(view) {
  const grid = $("#attn-grid");
  grid.textContent = "";
  grid.style.gridTemplateColumns = `2.5em repeat(${view.heads}, 76px)`;
  for (let layer = 0; layer < view.layers; layer++) {
    const label = document.createElement("div");
    label.className = "row-label";
    label.textContent = `L${layer}`;
    grid.appendChild(label);
    for (let head = 0; head < view.heads; head++) {
      const fig = document.createElement("figure");
      fig.dataset.layer = layer;
      fig.dataset.head = head;
      const canvas = document.createElement("canvas");
      drawPattern(canvas, view, layer, head, 1);
      const cap = document.createElement("figcaption");
      cap.textContent = `L${layer} H${head}`;
      fig.append(canvas, cap);
      fig.onclick = () => selectHead(layer, head);
      grid.appendChild(fig);
    }
  }
}

function selectHead(layer, head) {
  const view = state.attention;
  state.selectedHead = [layer, head];
  for (const f of document.querySelectorAll("#attn-grid figure")) {
    f.classList.toggle("selected", Number(f.dataset.layer) === layer && Number(f.dataset.head) === head);
  }
  const n = view.tokens.length;
  const cell = Math.max(6, Math.min(28, Math.floor(520 / n)));
  const margin = 90;
  const canvas = document.createElement("canvas");
  const inner = document.createElement("canvas");
  drawPattern(inner, view, layer, head, cell);
  canvas.width = margin + n * cell + 4;
  canvas.height = margin + n * cell + 4;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(inner, margin, margin);
  ctx.strokeStyle = "#d9dee5";
  ctx.strokeRect(margin, margin, n * cell, n * cell);
  ctx.fillStyle = "#1d2430";
  ctx.font = `${Math.min(12, cell)}px monospace`;
  const label = (t) => JSON.stringify(t.text).slice(1, -1).slice(0, 10);
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  view.tokens.forEach((t, i) => ctx.fillText(label(t), margin - 4, margin + (i + 0.5) * cell));
  view.tokens.forEach((t, i) => {
    ctx.save();
    ctx.translate(margin + (i + 0.5) * cell, margin - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(label(t), 0, 0);
    ctx.restore();
  });
  canvas.onmousemove = (ev) => {
    const r = canvas.getBoundingClientRect();
    const k = Math.floor((ev.clientX - r.left - margin) / cell);
    const q = Math.floor((ev.clientY - r.top - margin) / cell);
    if (q < 0 || k < 0 || q >= n || k >= n) return hideTip();
    const w = k <= q ? patternOf(view, layer, head)[q * n + k] / 255 : 0;
    showTip(ev, `query #${q} ${JSON.stringify(view.tokens[q].text)} → key #${k} ` +
      `${JSON.stringify(view.tokens[k].text)}: ${w.toFixed(3)}`);
  };
  canvas.onmouseleave = hideTip;
  const box = $("#attn-large");
  box.textContent = "";
  const title = document.createElement("h3");
  title.textContent = `layer ${layer}, head ${head}`;
  box.append(title, canvas);
}

// ------------------------------------------------------------------------------ lens
async function loadLens(text) {
  const status = $("#lens-status");
  setStatus(status, "analysing…");
  try {
    const view = await api("/api/lens", { text });
    state.analysed.lens = text;
    const table = $("#lens-table");
    table.textContent = "";
    const head = table.insertRow();
    head.appendChild(document.createElement("th")).textContent = "layer";
    view.tokens.forEach((t, i) => {
      head.appendChild(document.createElement("th")).textContent = `${i} ${JSON.stringify(t.text).slice(1, -1)}`;
    });
    view.top.forEach((row, layer) => {
      const tr = table.insertRow();
      tr.appendChild(document.createElement("th")).textContent = `L${layer}`;
      row.forEach((t, pos) => {
        const td = tr.insertCell();
        const p = view.probs[layer][pos];
        td.textContent = JSON.stringify(t.text).slice(1, -1);
        td.style.background = `rgba(47, 111, 223, ${0.05 + 0.7 * p})`;
        td.title = `layer ${layer}, after position ${pos}: ${JSON.stringify(t.text)} p=${p.toFixed(3)}`;
        const next = view.tokens[pos + 1];
        if (next && next.id === t.id) td.classList.add("next");
      });
    });
    setStatus(status, `${view.top.length} layers × ${view.tokens.length} positions` +
      (view.truncated ? " (the first ones of the text)" : ""));
  } catch (e) {
    setStatus(status, e.message, true);
  }
}

// ------------------------------------------------------------------------------ training
// One directory: its curves, live. Several (comma-separated): their losses overlaid, one colour
// per run, and `mygpt2 compare`'s table from /api/compare.
const training = { timer: null, runs: [], compare: null, compareKey: "", compareAt: 0 };
const COLORS = ["#2f6fdf", "#e8710a", "#1e8e3e", "#9334e6", "#d01884", "#12b5cb", "#5f6368"];
const COMPARE_EVERY_MS = 30000; // the table reads each run's checkpoint: not on every poll

function watch() {
  clearTimeout(training.timer);
  const dirs = $("#run-dir").value.split(",").map((d) => d.trim()).filter(Boolean);
  training.runs = (dirs.length ? dirs : [""]).map((dir) => ({ dir, offset: 0, file: null, rows: [] }));
  training.compare = null;
  training.compareKey = "";
  training.compareAt = 0;
  const several = training.runs.length > 1;
  $("#x-axis-box").hidden = !several;
  $("#compare").hidden = !several;
  $("#compare-table").textContent = "";
  setStatus($("#compare-status"), "");
  $("#charts").textContent = "";
  $("#compare-legend").textContent = "";
  poll();
}

async function poll() {
  const status = $("#training-status");
  try {
    let changed = false;
    for (const run of training.runs) {
      const q = new URLSearchParams({ out_dir: run.dir, offset: run.offset, file: run.file || "" });
      const got = await api("/api/metrics?" + q);
      if (got.reset) run.rows = [];
      run.rows.push(...got.rows);
      run.offset = got.offset;
      run.file = got.file;
      run.bad = got.bad_lines;
      changed = changed || got.rows.length > 0 || got.reset;
    }
    const time = new Date().toLocaleTimeString();
    if (training.runs.length === 1) {
      const run = training.runs[0];
      const bad = run.bad ? ` · ${run.bad} unreadable lines skipped` : "";
      setStatus(status, run.file === null
        ? "no metrics.jsonl yet; waiting for the run to write one"
        : `${run.rows.length} rows · updated ${time}${bad}`);
      if (changed) drawTraining();
    } else {
      const waiting = training.runs.filter((r) => r.file === null).map((r) => r.dir);
      const rows = training.runs.reduce((n, r) => n + r.rows.length, 0);
      setStatus(status, `${training.runs.length} runs · ${rows} rows · updated ${time}` +
        (waiting.length ? ` · no metrics.jsonl yet in ${waiting.join(", ")}` : ""));
      if (changed) drawComparison();
      loadComparison();
    }
  } catch (e) {
    setStatus(status, e.message, true);
  }
  training.timer = setTimeout(poll, 2000);
}

async function loadComparison() {
  // again when a run has a new evaluation, or its other rows changed and a while has passed
  const evals = training.runs.map((r) => r.rows.filter((x) => x.kind === "eval").length).join();
  const rows = training.runs.map((r) => r.rows.length).join();
  const due = Date.now() - training.compareAt > COMPARE_EVERY_MS;
  if (training.compareKey === evals + "|" + rows) return;
  if (training.compareKey.split("|")[0] === evals && !due) return;
  training.compareKey = evals + "|" + rows;
  training.compareAt = Date.now();
  const dirs = training.runs.map((r) => r.dir).join(",");
  try {
    const metric = training.compare && training.compare.metric;
    training.compare = await api("/api/compare?" + new URLSearchParams({ dirs }));
    setStatus($("#compare-status"), training.compare.notes.map((n) => "note: " + n).join(" "));
    renderComparison();
    if (training.compare.metric !== metric) drawComparison();
  } catch (e) {
    setStatus($("#compare-status"), e.message, true);
  }
}

function renderComparison() {
  const c = training.compare;
  const unit = c.metric === "val_bpb" ? "val bpb" : "val loss";
  const to = c.target === null ? "to target" : `to ${c.target.toFixed(4)}` + (c.target_given ? "" : " (reached by all)");
  const cell = (v, digits) => (v === null || v === undefined ? "-" : digits === undefined
    ? Math.round(v).toLocaleString("en-US") : v.toFixed(digits));
  const table = $("#compare-table");
  table.textContent = "";
  const head = table.createTHead().insertRow();
  for (const h of ["run", "steps", "tokens", `final ${unit}`, `best ${unit}`, "val bpb", "tok/s", "train s", `time ${to}`]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const body = table.createTBody();
  c.runs.forEach((s, i) => {
    const tr = body.insertRow();
    const reached = s.to_target_s === null ? "-" : `${s.to_target_s.toFixed(1)} s (step ${s.to_target_step})`;
    const cells = [training.runs[i] ? training.runs[i].dir : s.run, String(s.steps), cell(s.tokens),
      cell(s.final, 4), cell(s.best, 4), cell(s.bpb, 4), cell(s.tokens_per_s), cell(s.wall_s, 1), reached];
    cells.forEach((text, j) => {
      const td = tr.insertCell();
      td.textContent = text;
      if (j === 0) td.style.borderLeft = `4px solid ${COLORS[i % COLORS.length]}`;
    });
  });
  if (c.differences.length) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = 9;
    td.className = "hint";
    td.textContent = "differ in: " + c.differences.map((d) => `${d.key} (${d.values.join(" / ")})`).join(", ");
  }
}

function secondsOf(rows) {
  // training seconds at each step: elapsed_s where logged, else tokens / tokens_per_s summed
  // (as mygpt2.compare estimates logs written before elapsed_s existed)
  const seconds = new Map();
  let total = 0, tokens = 0;
  for (const r of rows) {
    if (r.kind !== "train") continue;
    if (typeof r.elapsed_s === "number") total = r.elapsed_s;
    else if (r.tokens_per_s) total += (r.tokens - tokens) / r.tokens_per_s;
    if (r.tokens !== undefined) tokens = r.tokens;
    seconds.set(r.step, total);
  }
  return seconds;
}

function drawComparison() {
  const axis = $("#x-axis").value;
  const metric = training.compare ? training.compare.metric : "val_loss";
  const label = { step: "step", tokens: "tokens seen", seconds: "training seconds" }[axis];
  const lines = (kind, key) => training.runs.map((run) => {
    const seconds = secondsOf(run.rows);
    const x = (r) => (axis === "step" ? r.step : axis === "tokens" ? r.tokens
      : typeof r.elapsed_s === "number" ? r.elapsed_s : seconds.get(r.step));
    const points = run.rows
      .filter((r) => r.kind === kind && typeof r[key] === "number" && typeof x(r) === "number")
      .map((r) => [x(r), r[key]]);
    return { name: run.dir, points };
  });
  const charts = [
    [metric === "val_bpb" ? "validation bits per byte" : "validation loss (nats/token)", lines("eval", metric)],
    ["training loss (nats/token)", lines("train", "loss")],
  ];
  const legend = $("#compare-legend");
  legend.textContent = "";
  training.runs.forEach((run, i) => {
    const entry = document.createElement("span");
    entry.className = "entry";
    entry.style.setProperty("--color", COLORS[i % COLORS.length]);
    entry.textContent = run.dir;
    legend.appendChild(entry);
  });
  drawCharts(charts, label, false);
}

function drawTraining() {
  const rows = training.runs[0].rows;
  // rows without a token count (health) sit at step x tokens per step of the run
  const counted = rows.filter((r) => r.tokens !== undefined && r.step > 0);
  const perStep = counted.length ? counted[counted.length - 1].tokens / counted[counted.length - 1].step : 0;
  const x = (r) => (r.tokens !== undefined ? r.tokens : perStep ? r.step * perStep : r.step);
  const series = (kind, key, name) => ({
    name,
    points: rows.filter((r) => r.kind === kind && typeof r[key] === "number").map((r) => [x(r), r[key]]),
  });
  const charts = [
    ["loss (nats/token)", [series("train", "loss", "train"), series("eval", "val_loss", "validation")]],
    ["learning rate", [series("train", "lr", "lr")]],
    ["gradient norm (before clipping)", [series("train", "grad_norm", "grad norm")]],
    ["validation bits per byte", [series("eval", "val_bpb", "val bpb")]],
  ];
  const health = rows.filter((r) => r.kind === "health");
  const keys = new Set();
  for (const r of health) for (const k of Object.keys(r)) if (typeof r[k] === "number" && !["step", "tokens"].includes(k)) keys.add(k);
  for (const k of [...keys].slice(0, 16)) charts.push([`health: ${k}`, [series("health", k, k)]]);
  drawCharts(charts, "tokens", true);
}

function drawCharts(charts, xLabel, named) {
  const box = $("#charts");
  box.textContent = "";
  for (const [title, lines] of charts) {
    if (!lines.some((s) => s.points.length)) continue;
    const div = document.createElement("div");
    div.className = "chart";
    const h = document.createElement("h3");
    h.textContent = title;
    const canvas = document.createElement("canvas");
    div.append(h, canvas);
    box.appendChild(div);
    lineChart(canvas, lines, xLabel, named);
  }
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
  const m = [1, 2, 5, 10].find((f) => (hi - lo) / (f * step) <= count) * step;
  const ticks = [];
  for (let t = Math.ceil(lo / m) * m; t <= hi + m * 1e-9; t += m) ticks.push(t);
  return ticks;
}

function short(v, step) {
  // enough digits that neighbouring ticks (`step` apart) read differently
  const a = Math.abs(v);
  const digits = Math.max(2, Math.floor(Math.log10(a || step)) - Math.floor(Math.log10(step)) + 1);
  if (a >= 1e9) return Number((v / 1e9).toPrecision(digits)) + "G";
  if (a >= 1e6) return Number((v / 1e6).toPrecision(digits)) + "M";
  if (a >= 1e4) return Number((v / 1e3).toPrecision(digits)) + "k";
  if (a !== 0 && a < 1e-2) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

function lineChart(canvas, lines, xLabel, named) {
  const ratio = window.devicePixelRatio || 1;
  const W = canvas.clientWidth || 420;
  const H = canvas.clientHeight || 220;
  canvas.width = W * ratio;
  canvas.height = H * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const pts = lines.flatMap((s) => s.points);
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const L = 52, R = 10, T = 8, B = 34;
  const px = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
  const py = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  ctx.font = "11px sans-serif";
  ctx.fillStyle = "#6a7380";
  ctx.strokeStyle = "#eceff3";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const yTicks = niceTicks(y0, y1, 5);
  const yStep = yTicks.length > 1 ? yTicks[1] - yTicks[0] : Math.abs(y0) || 1;
  for (const t of yTicks) {
    ctx.beginPath(); ctx.moveTo(L, py(t)); ctx.lineTo(W - R, py(t)); ctx.stroke();
    ctx.fillText(short(t, yStep), L - 4, py(t));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const xTicks = niceTicks(x0, x1, 6);
  const xStep = xTicks.length > 1 ? xTicks[1] - xTicks[0] : Math.abs(x0) || 1;
  for (const t of xTicks) ctx.fillText(short(t, xStep), px(t), H - B + 4);
  ctx.fillText(xLabel, (L + W - R) / 2, H - 14);
  lines.forEach((s, i) => {
    if (!s.points.length) return;
    ctx.strokeStyle = ctx.fillStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.points.forEach(([a, b], j) => (j ? ctx.lineTo(px(a), py(b)) : ctx.moveTo(px(a), py(b))));
    ctx.stroke();
    if (s.points.length < 40) for (const [a, b] of s.points) ctx.fillRect(px(a) - 2, py(b) - 2, 4, 4);
    if (!named) return; // runs compared are named in the legend above the charts
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText(s.name, W - R - 2, T + 2 + 13 * i);
  });
}

// ------------------------------------------------------------------------------ features
// SAEs the server holds (--sae_dir, --features): the Generate view's steer field, and the
// Features view (reports written by `mygpt2 inspect features`). Text from the server goes
// into the page with textContent only.
const features = { saes: [], loaded: false, selected: null };

async function loadSaes() {
  try {
    features.saes = (await api("/api/saes")).saes;
  } catch (e) {
    return;
  }
  const steerSae = $("#steer-sae");
  const reportSae = $("#feature-sae");
  steerSae.replaceChildren();
  reportSae.replaceChildren();
  for (const s of features.saes) {
    const label = `${s.sae.split("/").pop()} · ${s.hook} · ${s.d_sae}`;
    steerSae.append(new Option(label, s.sae));
    if (s.report) reportSae.append(new Option(label, s.sae));
  }
  $("#steer-box").hidden = features.saes.length === 0;
  $("#features-none").hidden = reportSae.options.length > 0;
}

function steerEntries() {
  // "3:4, 7:-2" -> [{sae, feature: 3, alpha: 4}, {sae, feature: 7, alpha: -2}]
  const raw = $("#steer").value.trim();
  if (!raw || $("#steer-box").hidden) return [];
  const sae = $("#steer-sae").value;
  return raw.split(",").map((part) => {
    const m = part.trim().match(/^#?(\d+)\s*:\s*([-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?)$/i);
    if (!m) throw new Error(`steer: write feature:alpha pairs such as 3:4, 7:-2 (got '${part.trim()}')`);
    return { sae, feature: Number(m[1]), alpha: Number(m[2]) };
  });
}

async function searchFeatures() {
  const status = $("#features-status");
  const sae = $("#feature-sae").value;
  if (!sae) return;
  const q = $("#feature-query").value;
  setStatus(status, "searching…");
  try {
    const found = await api(`/api/features?sae=${encodeURIComponent(sae)}&q=${encodeURIComponent(q)}`);
    features.loaded = true;
    const list = $("#feature-list");
    list.replaceChildren();
    for (const f of found.features) {
      const b = document.createElement("button");
      b.dataset.id = f.id;
      const on = f.fires_on === null ? "" : ` · ${quoteToken(f.fires_on)}`;
      b.textContent = `#${f.id} · ${(100 * f.density).toFixed(2)}% · max ${f.max.toPrecision(3)}${on}`;
      b.onclick = () => showFeature(f.id);
      list.append(b);
    }
    const what = q ? `matching ${JSON.stringify(q)}` : "firing most strongly";
    const n = found.features.length;
    setStatus(status, `${n} feature${n === 1 ? "" : "s"} ${what}; read on ${found.tokens.toLocaleString()} tokens at ${found.hook}`);
    if (found.features.length === 1 || (found.features.length && !q && features.selected === null)) {
      showFeature(found.features[0].id);
    }
  } catch (e) {
    setStatus(status, e.message, true);
  }
}

function quoteToken(text) {
  // as mygpt2.sae.features.quoted: printable characters as they are, the others escaped
  const escaped = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) =>
    ({ "\n": "\\n", "\t": "\\t", "\r": "\\r" })[c] || "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
  return `'${escaped}'`;
}

function tokenRows(title, rows) {
  const box = document.createElement("div");
  const head = document.createElement("b");
  head.textContent = title;
  const table = document.createElement("table");
  for (const r of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = quoteToken(r.token);
    tr.insertCell().textContent = (r.logit >= 0 ? "+" : "") + r.logit.toFixed(3);
  }
  box.append(head, table);
  return box;
}

function histogram(counts, edges) {
  const used = counts.map((c, i) => (c ? i : -1)).filter((i) => i >= 0);
  const box = document.createElement("div");
  if (!used.length) return box;
  const lo = used[0], hi = used[used.length - 1] + 1, tallest = Math.max(...counts);
  const bars = document.createElement("div");
  bars.className = "histogram";
  for (let i = lo; i < hi; i++) {
    const bar = document.createElement("div");
    bar.style.height = `${(100 * counts[i]) / tallest}%`;
    bar.title = `${edges[i].toPrecision(3)} to ${edges[i + 1].toPrecision(3)}: ${counts[i]} tokens`;
    bars.append(bar);
  }
  const axis = document.createElement("div");
  axis.className = "hint";
  axis.textContent = `activations ${edges[lo].toPrecision(2)} to ${edges[hi].toPrecision(2)} (log scale)`;
  box.append(bars, axis);
  return box;
}

function contextLine(c, peak) {
  const line = document.createElement("div");
  line.className = "context";
  c.tokens.forEach((token, i) => {
    const act = c.acts[i];
    const el = document.createElement(i === c.at ? "mark" : "span");
    el.textContent = token.replace(/\n/g, "↵");
    el.title = `activation ${act.toPrecision(3)}`;
    if (i !== c.at && act > 0 && peak > 0) el.style.background = `rgba(230,126,34,${Math.min(act / peak, 1).toFixed(2)})`;
    line.append(el);
  });
  const value = document.createElement("span");
  value.className = "act";
  value.textContent = c.activation.toPrecision(3);
  line.append(value);
  return line;
}

async function showFeature(id) {
  const sae = $("#feature-sae").value;
  const detail = $("#feature-detail");
  try {
    const f = await api(`/api/features/${id}?sae=${encodeURIComponent(sae)}`);
    features.selected = f.id;
    for (const b of document.querySelectorAll("#feature-list button")) {
      b.classList.toggle("selected", Number(b.dataset.id) === f.id);
    }
    const title = document.createElement("h3");
    title.textContent = `feature ${f.id}`;
    const stats = document.createElement("div");
    stats.className = "hint";
    stats.textContent = `density ${(100 * f.density).toFixed(3)}% (${f.count} tokens) · max ${f.max.toPrecision(3)} · mean when firing ${f.mean.toPrecision(3)}`;
    const steer = document.createElement("button");
    steer.id = "steer-with";
    steer.textContent = "Steer with it";
    steer.onclick = () => {
      $("#steer-sae").value = sae;
      const alpha = Math.max(1, Math.round(2 * f.max));
      $("#steer").value = `${f.id}:${alpha}`;
      show("generate");
    };
    const cols = document.createElement("div");
    cols.className = "cols";
    cols.append(histogram(f.histogram, f.histogram_edges), tokenRows("promotes", f.promotes), tokenRows("suppresses", f.suppresses));
    const contexts = document.createElement("div");
    contexts.id = "feature-contexts";
    for (const c of f.contexts) contexts.append(contextLine(c, f.max));
    detail.replaceChildren(title, stats, steer, cols, contexts);
  } catch (e) {
    setStatus($("#features-status"), e.message, true);
  }
}

// ------------------------------------------------------------------------------ tooltips
function showTip(ev, text) {
  const tip = $("#tip");
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = `${ev.clientX + 12}px`;
  tip.style.top = `${ev.clientY + 14}px`;
}

function hideTip() {
  $("#tip").hidden = true;
}

// ------------------------------------------------------------------------------ wiring
for (const b of document.querySelectorAll("#tabs button")) b.onclick = () => show(b.dataset.view);
$("#generate").onclick = generate;
$("#stop").onclick = () => controller && controller.abort();
$("#prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) generate();
});
$("#prompt").addEventListener("input", () => {
  $("#output .prompt").textContent = "";
  $("#output .generated").textContent = "";
});
for (const r of document.querySelectorAll("input[name=shade]")) r.onchange = () => state.tokens && renderTokens();
$("#token-text").addEventListener("mouseover", (ev) => {
  if (ev.target.dataset.index !== undefined) showTip(ev, tokenTip(Number(ev.target.dataset.index)));
});
$("#token-text").addEventListener("mousemove", (ev) => {
  if (ev.target.dataset.index !== undefined) showTip(ev, tokenTip(Number(ev.target.dataset.index)));
});
$("#token-text").addEventListener("mouseout", hideTip);
$("#token-text").addEventListener("click", (ev) => {
  if (ev.target.dataset.index !== undefined) selectToken(Number(ev.target.dataset.index));
});
$("#watch").onclick = watch;
$("#run-dir").addEventListener("keydown", (ev) => ev.key === "Enter" && watch());
$("#x-axis").onchange = () => training.runs.length > 1 && drawComparison();
// /?runs=a,b (what `mygpt2 compare` suggests) opens the training view on those runs
const linked = new URLSearchParams(location.search).get("runs");
if (linked) $("#run-dir").value = linked;
loadInfo().then(() => linked && show("training"));
loadSaes();
$("#feature-search").onclick = searchFeatures;
$("#feature-query").addEventListener("keydown", (ev) => ev.key === "Enter" && searchFeatures());
$("#feature-sae").onchange = () => { features.selected = null; searchFeatures(); };
document.querySelector("button[data-view=features]").addEventListener("click", () => {
  if (!features.loaded) searchFeatures();
});
