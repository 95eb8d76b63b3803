// seem-ray web page: plain JavaScript, no build step.
// The API is stateless: the page keeps the prompts of the current object and sends the whole
// set again each round, with the last answer as previous_mask. "New object" keeps the current
// mask in the list of objects and starts the next; "Segment everything" replaces that list
// with the panoptic segments. Downloads cover every kept object and the current one.
"use strict";

const state = {
  imageId: null,
  imageName: "",
  width: 0,
  height: 0,
  image: null,        // HTMLImageElement of the upload
  prompts: [],        // spatial and referring prompts of the current object, in order
  text: "",           // phrase of the current object ("" = none)
  audio: null,        // base64 of a recording not yet sent (its transcript becomes `text`)
  transcript: null,   // what the server heard in the last recording
  lastMask: null,     // RLE of the last answer (sent as previous_mask)
  lastResult: null,   // {label, score, label_score, area, bbox}
  round: 0,           // answers for the current object
  objects: [],        // kept objects and panoptic segments: {rle, label, score, area, bbox, color, source}
  latencies: [],      // {what, ms, decodeMs}, oldest first
  reference: null,    // {imageId, width, height, image, box} of the referring image
  colors: 0,          // colours handed out so far (a removed object's colour is not reused at once)
  busy: false,
  pending: false,     // a change arrived while a request was running
  drag: null,         // box / scribble / brush stroke being drawn
  poly: null,         // polygon being drawn (closed by a click on its first corner)
};
window.seem = state;  // for tests and for poking at the page from the console

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image-canvas");
const overlay = $("overlay");
const octx = overlay.getContext("2d");
// Magenta fill and a yellow edge for the current object: visible on most photos. Kept
// objects get colours from PALETTE (also their colour in the downloaded PNG).
const MASK_RGBA = [255, 0, 170, 110];
const EDGE_RGBA = [255, 235, 59, 255];
const PALETTE = [[31, 119, 180], [44, 160, 44], [255, 127, 14], [148, 103, 189], [23, 190, 207],
  [214, 39, 40], [188, 189, 34], [140, 86, 75], [227, 119, 194], [127, 127, 127]];
const KEPT_ALPHA = 120;
const LATENCIES_SHOWN = 8;

// ------------------------------------------------------------------ helpers
function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

async function apiError(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch (e) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

async function postJson(path, body) {
  // Keys starting with "_" are the page's own drawing data (a brush stroke's path): the
  // API refuses unknown fields.
  const h = headers({ "Content-Type": "application/json" });
  // Serve's proxy routes by this header to the replica holding the image (docs/api.md): the
  // body's image_id, never the main image's on an upload of another one.
  if (body.image_id) h["Serve-Multiplexed-Model-Id"] = body.image_id;
  return fetch(path, {
    method: "POST",
    headers: h,
    body: JSON.stringify(body, (k, v) => (k.startsWith("_") ? undefined : v)),
  });
}

function tool() { return document.querySelector('input[name="tool"]:checked').value; }

function positiveFor(event) {
  if (event.button === 2 || event.shiftKey) return false;
  return document.querySelector('input[name="polarity"]:checked').value === "positive";
}

// Event position -> pixels of the image drawn on `canvas` (canvases are scaled by CSS).
function toImage(event, canvas, width, height) {
  const r = canvas.getBoundingClientRect();
  const x = (event.clientX - r.left) * width / r.width;
  const y = (event.clientY - r.top) * height / r.height;
  return [Math.min(Math.max(x, 0), width - 0.5), Math.min(Math.max(y, 0), height - 0.5)];
}

function vocabulary() {
  const names = $("vocabulary").value.split(/[,\n]/).map((s) => s.trim()).filter(Boolean);
  return [...new Set(names)];
}

// `body` with the page's vocabulary, when one is typed (else the model's own applies).
function withVocabulary(body) {
  const names = vocabulary();
  if (names.length) body.vocabulary = names;
  return body;
}

function logLatency(what, ms, timings) {
  const decodeMs = timings && typeof timings.decode === "number" ? timings.decode : null;
  state.latencies.push({ what, ms, decodeMs });
  renderLatency();
  return `${what}: ${ms.toFixed(0)} ms` + (decodeMs === null ? "" : ` (decode ${decodeMs.toFixed(1)} ms)`);
}

// ------------------------------------------------------------------ masks
// COCO compressed RLE -> Uint8Array in column-major order (index x * h + y).
// Counts are 5-bit groups in chars 48..111 (0x20: more groups, 0x10 of the last: sign);
// from the third count on each is a delta to the count two places back.
function decodeRle(rle) {
  const [h, w] = rle.size;
  const s = rle.counts;
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * Math.pow(2, 5 * k);
      more = (c & 0x20) !== 0;
      p += 1; k += 1;
      if (!more && (c & 0x10)) x -= Math.pow(2, 5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);
  let idx = 0, value = 0;
  for (const c of counts) {
    if (value) mask.fill(1, idx, idx + c);
    idx += c;
    value ^= 1;
  }
  return mask;
}

// Column-major Uint8Array -> COCO compressed RLE (the inverse of decodeRle).
function encodeRle(mask, h, w) {
  const counts = [];
  let value = 0, run = 0;
  for (let i = 0; i < mask.length; i++) {
    if ((mask[i] ? 1 : 0) !== value) { counts.push(run); run = 0; value ^= 1; }
    run += 1;
  }
  counts.push(run);
  let s = "";
  counts.forEach((count, i) => {
    let x = i > 2 ? count - counts[i - 2] : count;
    let more = true;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = (c & 0x10) ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  });
  return { size: [h, w], counts: s };
}

// Draw with `paint(ctx)` on a blank canvas of the image's size; the painted pixels as a
// column-major mask (how polygons and brush strokes become mask prompts).
function rasterize(paint) {
  const c = document.createElement("canvas");
  c.width = state.width; c.height = state.height;
  const ctx = c.getContext("2d");
  ctx.fillStyle = ctx.strokeStyle = "#fff";
  paint(ctx);
  const px = ctx.getImageData(0, 0, c.width, c.height).data;
  const mask = new Uint8Array(c.width * c.height);
  for (let y = 0; y < c.height; y++) {
    for (let x = 0; x < c.width; x++) if (px[(y * c.width + x) * 4 + 3] >= 128) mask[x * c.height + y] = 1;
  }
  return mask;
}

function maskOf(item) {  // decoded once per object
  if (!item._mask) item._mask = decodeRle(item.rle);
  return item._mask;
}

// Paint layers ({mask, fill, edge?}) into one RGBA image, later layers on top.
function paintLayers(layers, w, h) {
  const img = new ImageData(w, h);
  const put = (o, c) => { img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = c[3]; };
  for (const { mask, fill, edge } of layers) {
    const inside = (x, y) => x >= 0 && y >= 0 && x < w && y < h && mask[x * h + y] === 1;
    for (let x = 0; x < w; x++) {
      for (let y = 0; y < h; y++) {
        if (!mask[x * h + y]) continue;
        const onEdge = edge && (!inside(x - 1, y) || !inside(x + 1, y) || !inside(x, y - 1) || !inside(x, y + 1));
        put((y * w + x) * 4, onEdge ? edge : fill);
      }
    }
  }
  return img;
}

function nextColor() { return PALETTE[state.colors++ % PALETTE.length]; }

function currentColor() { return PALETTE[state.colors % PALETTE.length]; }

function area(mask) { let n = 0; for (const v of mask) n += v; return n; }

// ------------------------------------------------------------------ drawing
// On the image's overlay unless another context (the video's) and its image width are given.
function drawPrompt(p, ctx = octx, width = state.width) {
  const color = p.positive === false ? "#e53935" : "#2e7d32";
  ctx.lineWidth = Math.max(1.5, width / 300);
  ctx.strokeStyle = color;
  ctx.fillStyle = color;
  const r = Math.max(3, width / 120);
  if (p.type === "point") {
    ctx.beginPath();
    ctx.arc(p.xy[0], p.xy[1], r, 0, 2 * Math.PI);
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  } else if (p.type === "box") {
    const [x0, y0, x1, y1] = p.xyxy;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  } else if (p.type === "scribble" || p.type === "polygon") {
    const path = p.path || p.points;
    ctx.beginPath();
    path.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (p.type === "polygon" && p !== state.poly) ctx.closePath();
    ctx.stroke();
    if (p === state.poly) path.forEach(([x, y]) => ctx.fillRect(x - r / 2, y - r / 2, r, r));
  } else if (p.type === "mask" && p._path) {
    ctx.globalAlpha = 0.45;
    ctx.lineWidth = p._brush; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    p._path.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (p._path.length === 1) ctx.lineTo(p._path[0][0] + 0.1, p._path[0][1]);
    ctx.stroke();
    ctx.globalAlpha = 1; ctx.lineCap = ctx.lineJoin = "butt";
  }
}

function drawLabel(result) {
  if (!result || !result.label) return;
  const text = `${result.label} ${(100 * (result.label_score || 0)).toFixed(0)}%`;
  const size = Math.max(11, Math.round(state.width / 28));
  octx.font = `600 ${size}px system-ui, sans-serif`;
  const [bx, by] = result.bbox;
  const tw = octx.measureText(text).width + 8;
  const x = Math.min(Math.max(bx, 0), Math.max(0, state.width - tw));
  const y = Math.max(by - size - 6, 0);
  octx.fillStyle = "rgba(29, 35, 43, 0.85)";
  octx.fillRect(x, y, tw, size + 6);
  octx.fillStyle = "#fff";
  octx.fillText(text, x + 4, y + size);
}

function redraw() {
  octx.clearRect(0, 0, overlay.width, overlay.height);
  const layers = state.objects.map((o) => ({ mask: maskOf(o), fill: o.color.concat([KEPT_ALPHA]) }));
  let current = null;
  if (state.lastMask) {
    current = decodeRle(state.lastMask);
    layers.push({ mask: current, fill: MASK_RGBA, edge: EDGE_RGBA });
  }
  if (layers.length && state.width) octx.putImageData(paintLayers(layers, state.width, state.height), 0, 0);
  state.prompts.forEach((p) => drawPrompt(p));
  if (state.drag) drawPrompt(state.drag.prompt);
  if (state.poly) drawPrompt(state.poly);
  state.objects.forEach(drawLabel);
  drawLabel(state.lastResult);
  overlay.dataset.maskArea = String(current ? area(current) : 0);
  overlay.dataset.round = String(state.round);
  overlay.dataset.objects = String(state.objects.length);
}

// ------------------------------------------------------------------ lists
function describe(p) {
  const sign = p.positive === false ? "−" : "+";
  const xy = (v) => v.map(Math.round).join(", ");
  if (p.type === "text") return `text “${p.text}”`;
  if (p.type === "point") return `${sign} click (${xy(p.xy)})`;
  if (p.type === "box") return `${sign} box (${xy(p.xyxy)})`;
  if (p.type === "scribble") return `${sign} scribble, ${p.path.length} points`;
  if (p.type === "polygon") return `${sign} polygon, ${p.points.length} corners`;
  if (p.type === "mask") return `${sign} painted mask, ${p._area} px`;
  if (p.type === "referring") return `region (${xy(p.region.xyxy)}) of the reference image`;
  return p.type;
}

function removeButton(title, onClick) {
  const b = document.createElement("button");
  b.type = "button"; b.className = "remove"; b.textContent = "×"; b.title = title;
  b.setAttribute("aria-label", title);
  b.addEventListener("click", onClick);
  return b;
}

function renderPromptList() {
  const list = $("prompt-list");
  list.innerHTML = "";
  const items = (state.text ? [{ type: "text", text: state.text }] : []).concat(state.prompts);
  items.forEach((p, i) => {
    const li = document.createElement("li");
    li.textContent = describe(p);
    li.appendChild(removeButton("remove this prompt", () => removePrompt(state.text ? i - 1 : i)));
    list.appendChild(li);
  });
  $("object-number").textContent = String(state.objects.length + 1);
  const n = items.length;
  // Say what a phrase will do, so that it never joins a click's object unnoticed.
  $("text-hint").textContent = n === 0
    ? "A phrase starts a new object."
    : `“Add to this object” joins the phrase to object ${state.objects.length + 1}'s ${n} prompt${n > 1 ? "s" : ""}; ` +
      "“Find as new object” keeps that object and looks for the phrase alone.";
}

function renderObjects() {
  const list = $("object-list");
  list.innerHTML = "";
  state.objects.forEach((o, i) => {
    const li = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${o.color.join(",")})`;
    li.appendChild(swatch);
    li.appendChild(document.createTextNode(
      `${o.label || "(no label)"} · ${(100 * (o.score || 0)).toFixed(0)}% · ${o.area} px`));
    li.appendChild(removeButton("take this result away", () => removeObject(i)));
    list.appendChild(li);
  });
}

function renderLatency() {
  const list = $("latency");
  list.innerHTML = "";
  const shown = state.latencies.slice(-LATENCIES_SHOWN).reverse();
  list.start = state.latencies.length;
  for (const l of shown) {
    const li = document.createElement("li");
    li.textContent = `${l.what}: ${l.ms.toFixed(0)} ms` + (l.decodeMs === null ? "" : `, decode ${l.decodeMs.toFixed(1)} ms`);
    list.appendChild(li);
  }
}

function showResult() {
  const r = state.lastResult;
  $("result").textContent = r
    ? `${r.label || "(no label)"} · label ${(100 * (r.label_score || 0)).toFixed(0)}% · ${r.area} px`
    : "";
}

function refresh() {
  renderPromptList();
  renderObjects();
  showResult();
  redraw();
}

// ------------------------------------------------------------------ images
async function uploadImage(blob) {
  const response = await fetch("/v1/images", {
    method: "POST",
    headers: headers({ "Content-Type": blob.type || "application/octet-stream" }),
    body: blob,
  });
  if (!response.ok) throw new Error(await apiError(response));
  const info = await response.json();
  const image = new Image();
  image.src = URL.createObjectURL(blob);
  await image.decode();
  return { imageId: info.image_id, width: info.width, height: info.height, cached: info.cached, image };
}

async function fetchSample(src) {
  const response = await fetch(src);
  if (!response.ok) throw new Error(`${src}: ${response.status}`);
  return response.blob();
}

async function openImage(blob, name) {
  setStatus(`Uploading ${name}…`);
  const info = await uploadImage(blob);
  Object.assign(state, { imageId: info.imageId, imageName: name, width: info.width, height: info.height, image: info.image });
  for (const c of [imageCanvas, overlay]) { c.width = info.width; c.height = info.height; }
  // Small images are shown larger: clicks on a 200-px picture are hard to place.
  const shown = Math.max(info.width, Math.min(640, info.width * 3));
  imageCanvas.style.width = `${shown}px`;
  imageCanvas.getContext("2d").drawImage(info.image, 0, 0, info.width, info.height);
  reset();
  setStatus(`Image ${info.width} × ${info.height} ready${info.cached ? " (cached)" : ""}. Click on an object.`);
}

// ------------------------------------------------------------------ segmenting
function requestBody() {
  const phrase = state.audio ? [{ type: "audio", data: state.audio }]
    : (state.text ? [{ type: "text", text: state.text }] : []);
  const body = { image_id: state.imageId, prompts: phrase.concat(state.prompts), max_masks: 1 };
  if (state.lastMask) body.previous_mask = state.lastMask;
  return withVocabulary(body);
}

async function segmentOnce() {
  state.pending = false;
  setStatus("Segmenting…");
  const t0 = performance.now();
  const response = await postJson("/v1/segment", requestBody());
  if (!response.ok) {
    const failed = response.clone();
    setStatus(await apiError(response), true);
    if (state.audio) await heard(failed);
    return false;
  }
  const answer = await response.json();
  if (state.audio) heardText((answer.transcripts || [""])[0]);
  const best = answer.masks[0];
  state.round += 1;
  state.lastMask = best ? best.rle : null;
  state.lastResult = best || null;
  redraw();
  showResult();
  setStatus(logLatency(`object ${state.objects.length + 1}, round ${state.round}`, performance.now() - t0, answer.timings_ms));
  return true;
}

async function segment() {
  if (!state.imageId) { setStatus("Choose an image first.", true); return; }
  if (!state.text && !state.audio && state.prompts.length === 0) { redraw(); return; }
  if (state.busy) { state.pending = true; return; }
  state.busy = true;
  try {
    do {
      if (!(await segmentOnce())) break;
    } while (state.pending);
  } catch (e) {
    setStatus(`Request failed: ${e}`, true);
  } finally {
    state.busy = false;
  }
}

async function segmentEverything() {
  if (!state.imageId) { setStatus("Choose an image first.", true); return; }
  if (state.busy) { setStatus("Wait for the running request.", true); return; }
  state.busy = true;
  try {
    setStatus("Segmenting everything…");
    const t0 = performance.now();
    const response = await postJson("/v1/panoptic", withVocabulary({ image_id: state.imageId }));
    if (!response.ok) { setStatus(await apiError(response), true); return; }
    const answer = await response.json();
    clearObject();
    state.colors = 0;
    state.objects = answer.segments.map((s, i) => ({
      rle: s.rle, label: s.label, score: s.score, label_score: s.score, area: s.area, bbox: s.bbox,
      color: nextColor(), source: "panoptic" }));
    refresh();
    setStatus(logLatency(`everything, ${answer.segments.length} segments`, performance.now() - t0, answer.timings_ms));
  } catch (e) {
    setStatus(`Request failed: ${e}`, true);
  } finally {
    state.busy = false;
  }
}

function addPrompt(p) {
  state.prompts.push(p);
  renderPromptList();
  redraw();
  segment();
}

// The last mask came from the prompts just changed: start the rounds again from scratch.
function restartRounds() {
  state.lastMask = null; state.lastResult = null; state.round = 0;
  refresh();
  segment();
}

function removePrompt(i) {  // i = -1: the phrase
  if (i < 0) state.text = "";
  else state.prompts.splice(i, 1);
  restartRounds();
}

function removeObject(i) {
  state.objects.splice(i, 1);
  refresh();
  setStatus(`Object removed; ${state.objects.length} left.`);
}

function clearObject() {
  Object.assign(state, { prompts: [], text: "", audio: null, lastMask: null, lastResult: null, round: 0, drag: null, poly: null });
}

// Keep the current mask (if any) as an object and start an empty one.
function newObject() {
  if (state.lastMask && state.lastResult) {
    const r = state.lastResult;
    state.objects.push({ rle: state.lastMask, label: r.label, score: r.score, label_score: r.label_score,
      area: r.area, bbox: r.bbox, color: nextColor(), source: "prompts" });
  }
  clearObject();
  $("text").value = "";
  refresh();
}

function reset() {
  clearObject();
  Object.assign(state, { objects: [], transcript: null, colors: 0 });
  $("text").value = "";
  $("transcript").textContent = "";
  refresh();
}
