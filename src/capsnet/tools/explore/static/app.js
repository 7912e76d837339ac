// CapsNet explorer: draw or load an image, show capsule lengths, reconstruction and routing.
"use strict";

const $ = (id) => document.getElementById(id);
const BOX = 20 / 28; // drawn strokes are fitted into this fraction of the input, as MNIST's digits
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

let info = null; // GET /api/info
let current = null; // the last POST /api/predict answer
let mode = "draw"; // "draw": normalise the canvas; "image": send imagePixels as they are
let imagePixels = null;
// Bumped by clear and by a slider reset: answers to requests sent before are dropped.
let inputGeneration = 0, sliderGeneration = 0;

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const res = await fetch(path, options);
  const data = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) throw new Error(`${path}: ${data.detail || res.status}`);
  return data;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// Run an async task at most once at a time; calls made meanwhile collapse into one rerun.
// body[data-busy] tells whether any such task is still running.
let running = 0;
function latest(task) {
  let busy = false, again = false;
  const run = async () => {
    if (busy) { again = true; return; }
    busy = true; document.body.dataset.busy = String(++running > 0);
    try { await task(); status(""); } catch (e) { status(e.message, true); }
    busy = false; document.body.dataset.busy = String(--running > 0);
    if (again) { again = false; run(); }
  };
  return run;
}

// --- pixels <-> canvases ---------------------------------------------------------------

// CHW floats in [0, 1] -> a canvas of the model's size (RGB for 3 channels, else grey).
function paint(canvas, pixels) {
  const c = info.in_channels, [h, w] = info.input_size, n = h * w;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
  for (let i = 0; i < n; i++) {
    let rgb;
    if (c === 3) rgb = [pixels[i], pixels[n + i], pixels[2 * n + i]];
    else { let s = 0; for (let k = 0; k < c; k++) s += pixels[k * n + i]; rgb = [s / c, s / c, s / c]; }
    img.data.set([...rgb.map((v) => 255 * v), 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

// RGBA bytes of a w×h canvas -> CHW floats in [0, 1], rounded to 3 decimals.
function toPixels(data) {
  const c = info.in_channels, [h, w] = info.input_size, n = h * w, out = new Array(c * n);
  for (let k = 0; k < c; k++) {
    for (let i = 0; i < n; i++) {
      const v = c === 3 ? data[4 * i + k] : (data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / 3;
      out[k * n + i] = Math.round((1000 * v) / 255) / 1000;
    }
  }
  return out;
}

// The drawing as the model's input: its bounding box scaled into BOX of the input and
// centred by mass, as MNIST digits were made.
function drawnPixels() {
  const src = $("draw"), [h, w] = info.input_size;
  const data = src.getContext("2d").getImageData(0, 0, src.width, src.height).data;
  let x0 = src.width, y0 = src.height, x1 = -1, y1 = -1;
  for (let y = 0; y < src.height; y++) {
    for (let x = 0; x < src.width; x++) {
      const i = 4 * (y * src.width + x);
      if (data[i] + data[i + 1] + data[i + 2] > 30) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return new Array(info.in_channels * h * w).fill(0);
  const bw = x1 - x0 + 1, bh = y1 - y0 + 1, s = (BOX * Math.min(h, w)) / Math.max(bw, bh);
  const out = document.createElement("canvas");
  out.width = w; out.height = h;
  const ctx = out.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  const place = (dx, dy) => {
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
    ctx.drawImage(src, x0, y0, bw, bh, (w - bw * s) / 2 + dx, (h - bh * s) / 2 + dy, bw * s, bh * s);
    return ctx.getImageData(0, 0, w, h).data;
  };
  const first = place(0, 0);
  let m = 0, mx = 0, my = 0;
  for (let i = 0; i < w * h; i++) {
    const v = first[4 * i] + first[4 * i + 1] + first[4 * i + 2];
    m += v; mx += v * ((i % w) + 0.5); my += v * (Math.floor(i / w) + 0.5);
  }
  return toPixels(place(w / 2 - mx / m, h / 2 - my / m));
}

// --- drawing ----------------------------------------------------------------------------

function setUpDrawing() {
  const canvas = $("draw"), [h, w] = info.input_size;
  const scale = Math.max(1, Math.floor(280 / Math.max(h, w)));
  canvas.width = w * scale; canvas.height = h * scale;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  let last = null;
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
  };
  const stroke = (p) => {
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2.2 * scale; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...(last || p)); ctx.lineTo(...p); ctx.stroke();
    last = p; mode = "draw"; predictSoon();
  };
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId); last = null; stroke(at(e));
  });
  canvas.addEventListener("pointermove", (e) => { if (last) stroke(at(e)); });
  const end = () => { last = null; };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  clear();
}

function clear() {
  const canvas = $("draw"), ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  mode = "draw"; imagePixels = null; current = null; inputGeneration++;
  $("truth").textContent = "Draw with the mouse or a finger, white on black.";
  paint($("seen"), drawnPixels());
  showEmpty();
}

async function loadRandom() {
  const r = await api("/api/random");
  const canvas = $("draw"), ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(paint(document.createElement("canvas"), r.pixels), 0, 0, canvas.width, canvas.height);
  mode = "image"; imagePixels = r.pixels;
  $("truth").textContent = `Test image #${r.index}, labelled “${r.class_name}”.`;
  predictSoon();
}

// --- prediction and its views -----------------------------------------------------------

async function predictNow() {
  const pixels = mode === "image" ? imagePixels : drawnPixels();
  paint($("seen"), pixels);
  const g = inputGeneration, answer = await api("/api/predict", { pixels });
  if (g === inputGeneration) show(answer);
}
const predictSoon = latest(predictNow);

function showEmpty() {
  $("prediction").textContent = "–"; $("confidence").textContent = "";
  for (const row of $("bars").children) {
    row.classList.remove("win");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".value").textContent = "";
  }
  const black = new Array(info.in_channels * info.input_size[0] * info.input_size[1]).fill(0);
  paint($("recon"), black);
  heatmap(null);
  resetSliders();
}

function show(p) {
  current = p;
  $("prediction").textContent = p.class_name;
  $("confidence").textContent = `score ${p.scores[p.prediction].toFixed(3)}`;
  [...$("bars").children].forEach((row, k) => {
    row.classList.toggle("win", k === p.prediction);
    row.querySelector(".fill").style.width = `${(100 * p.scores[k]).toFixed(1)}%`;
    row.querySelector(".value").textContent = p.scores[k].toFixed(3);
  });
  heatmap(p.coupling);
  resetSliders();
  if (p.reconstruction) paint($("recon"), p.reconstruction);
}

function buildBars() {
  for (const name of info.class_names) {
    const row = document.createElement("div");
    row.className = "bar"; row.setAttribute("role", "listitem");
    const label = document.createElement("span");
    label.className = "name"; label.textContent = name; label.title = name;
    const track = document.createElement("span"), fill = document.createElement("span");
    track.className = "track"; fill.className = "fill"; track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    row.append(label, track, value);
    $("bars").append(row);
  }
}

function viridis(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  return VIRIDIS[i].map((a, k) => a + (x - i) * (VIRIDIS[i + 1][k] - a));
}

// Mean coupling to the winner over the primary capsule types, on the primary grid; the
// colours span the map's own range.
function heatmap(values) {
  if (!info.capsules) return;
  const [gh, gw] = info.primary_grid, canvas = $("coupling");
  canvas.width = gw; canvas.height = gh;
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(gw, gh);
  const lo = values ? Math.min(...values) : 0, hi = values ? Math.max(...values) : 0;
  for (let i = 0; i < gw * gh; i++) {
    img.data.set([...viridis(values ? (values[i] - lo) / Math.max(hi - lo, 1e-9) : 0), 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  const digits = hi - lo < 0.01 ? 5 : 3;
  $("coupling-min").textContent = values ? lo.toFixed(digits) : "–";
  $("coupling-max").textContent = values ? hi.toFixed(digits) : "–";
  const winner = current ? `“${current.class_name}”` : "the winning class";
  $("coupling-note").textContent = `Coupling coefficients from the primary capsules to ${winner} ` +
    `after routing, averaged over the ${info.primary_types} capsule types at each position of ` +
    `the ${gh}×${gw} primary grid (uniform coupling would be 1/${info.class_names.length}).`;
}

// --- pose sliders -------------------------------------------------------------------------

function buildSliders() {
  const { min, max, step, mark } = info.slider;
  for (let d = 0; d < info.class_dim; d++) {
    const row = document.createElement("label");
    row.className = "slider";
    const name = document.createElement("span");
    name.textContent = `d${d}`;
    const rail = document.createElement("span");
    rail.className = "rail";
    for (const m of [-mark, mark]) {
      const tick = document.createElement("span");
      tick.className = "mark";
      tick.style.left = `calc(var(--thumb) / 2 + (100% - var(--thumb)) * ${(m - min) / (max - min)})`;
      rail.append(tick);
    }
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min, max, step, value: 0 });
    input.setAttribute("aria-label", `pose dimension ${d}`);
    const out = document.createElement("output");
    input.addEventListener("input", () => { out.textContent = signed(input.value); decodeSoon(); });
    rail.append(input);
    row.append(name, rail, out);
    $("sliders").append(row);
  }
  resetSliders();
}

const signed = (v) => (v > 0 ? "+" : "") + Number(v).toFixed(2);

function resetSliders() {
  sliderGeneration++;
  for (const row of $("sliders").children) {
    row.querySelector("input").value = 0;
    row.querySelector("output").textContent = signed(0);
  }
}

const decodeSoon = latest(async () => {
  if (!current) return;
  const deltas = [...$("sliders").querySelectorAll("input")].map((s) => Number(s.value));
  const pose = current.pose.map((v, d) => v + deltas[d]);
  const g = sliderGeneration, answer = await api("/api/decode", { class_index: current.prediction, pose });
  if (g === sliderGeneration) paint($("recon"), answer.reconstruction);
});

// Display size of a canvas showing an h×w grid: its longer side is `size` CSS pixels.
function fit(canvas, [h, w], size) {
  const scale = size / Math.max(h, w);
  canvas.style.width = `${Math.round(w * scale)}px`;
  canvas.style.height = `${Math.round(h * scale)}px`;
}

// --- start ----------------------------------------------------------------------------------

async function start() {
  info = await api("/api/info");
  const [h, w] = info.input_size;
  $("model").textContent = `${info.dataset || "unknown dataset"} · ${info.class_names.length} classes · ` +
    `${info.in_channels}×${h}×${w} input · ` +
    (info.capsules ? `${info.class_dim}-D class capsules` : "no capsules");
  fit($("seen"), info.input_size, 56);
  fit($("recon"), info.input_size, 140);
  if (info.capsules) fit($("coupling"), info.primary_grid, 200);
  else $("coupling").closest(".card").hidden = true;
  if (!info.capsules) $("caps-title").textContent = "Class scores";
  buildBars();
  buildSliders();
  if (!info.has_decoder) {
    $("sliders").hidden = $("reset").hidden = true;
    $("recon").closest(".card").querySelector(".note").textContent = "This model has no decoder.";
  }
  $("random").disabled = info.test_images === 0;
  if (info.test_images === 0) $("random").title = "the run's test images were not found";
  setUpDrawing();
  $("clear").addEventListener("click", clear);
  $("random").addEventListener("click", () => loadRandom().catch((e) => status(e.message, true)));
  $("reset").addEventListener("click", () => {
    resetSliders();
    if (current && current.reconstruction) paint($("recon"), current.reconstruction);
  });
  document.body.dataset.ready = "true";
}

start().catch((e) => status(e.message, true));
