// seem-ray web page: plain JavaScript, no build step.
// One object at a time: every click / box / scribble / phrase is added to the prompts of
// that object, and the whole set is sent again with the last answer as previous_mask
// (the API is stateless). Reset starts a new object.
"use strict";

const state = {
  imageId: null,
  width: 0,
  height: 0,
  image: null,        // HTMLImageElement of the upload
  prompts: [],        // spatial prompts of the current object, in order
  text: "",           // phrase of the current object ("" = none)
  audio: null,        // base64 of a recording not yet sent (its transcript becomes `text`)
  transcript: null,   // what the server heard in the last recording
  lastMask: null,     // RLE of the last answer (sent as previous_mask)
  lastResult: null,   // {label, score, label_score, area, bbox}
  round: 0,
  busy: false,
  pending: false,     // a change arrived while a request was running
  drag: null,         // box / scribble being drawn
};
window.seem = state;  // for tests and for poking at the page from the console

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image-canvas");
const overlay = $("overlay");
const octx = overlay.getContext("2d");
// Magenta fill and a yellow edge: visible on skies, water, grass and most photos.
const MASK_RGBA = [255, 0, 170, 110];
const EDGE_RGBA = [255, 235, 59, 255];

// ------------------------------------------------------------------ helpers
function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  // Serve's proxy routes by this header to the replica holding the image (docs/api.md).
  if (state.imageId) h["Serve-Multiplexed-Model-Id"] = state.imageId;
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

function tool() { return document.querySelector('input[name="tool"]:checked').value; }

function positiveFor(event) {
  if (event.button === 2 || event.shiftKey) return false;
  return document.querySelector('input[name="polarity"]:checked').value === "positive";
}

// Event position -> original image pixels (the canvas is scaled by CSS).
function toImage(event) {
  const r = overlay.getBoundingClientRect();
  const x = (event.clientX - r.left) * state.width / r.width;
  const y = (event.clientY - r.top) * state.height / r.height;
  return [Math.min(Math.max(x, 0), state.width - 0.5), Math.min(Math.max(y, 0), state.height - 0.5)];
}

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

// ------------------------------------------------------------------ drawing
function drawMask(rle) {
  const [h, w] = rle.size;
  const mask = decodeRle(rle);
  const img = octx.createImageData(w, h);
  const inside = (x, y) => x >= 0 && y >= 0 && x < w && y < h && mask[x * h + y] === 1;
  let area = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      if (!mask[x * h + y]) continue;
      const edge = !inside(x - 1, y) || !inside(x + 1, y) || !inside(x, y - 1) || !inside(x, y + 1);
      const c = edge ? EDGE_RGBA : MASK_RGBA;
      const o = (y * w + x) * 4;
      img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = c[3];
      area += 1;
    }
  }
  octx.putImageData(img, 0, 0);
  return area;
}

function drawPrompt(p) {
  const color = p.positive === false ? "#e53935" : "#2e7d32";
  const lw = Math.max(1.5, state.width / 300);
  octx.lineWidth = lw;
  octx.strokeStyle = color;
  octx.fillStyle = color;
  if (p.type === "point") {
    octx.beginPath();
    octx.arc(p.xy[0], p.xy[1], Math.max(3, state.width / 120), 0, 2 * Math.PI);
    octx.fill();
    octx.strokeStyle = "#fff";
    octx.stroke();
  } else if (p.type === "box") {
    const [x0, y0, x1, y1] = p.xyxy;
    octx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  } else if (p.type === "scribble") {
    octx.beginPath();
    p.path.forEach(([x, y], i) => (i ? octx.lineTo(x, y) : octx.moveTo(x, y)));
    octx.stroke();
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
  let area = 0;
  if (state.lastMask) area = drawMask(state.lastMask);
  state.prompts.forEach(drawPrompt);
  if (state.drag) drawPrompt(state.drag.prompt);
  drawLabel(state.lastResult);
  overlay.dataset.maskArea = String(area);
  overlay.dataset.round = String(state.round);
}

function renderPromptList() {
  const list = $("prompt-list");
  list.innerHTML = "";
  const items = (state.text ? [{ type: "text", text: state.text }] : []).concat(state.prompts);
  for (const p of items) {
    const li = document.createElement("li");
    const sign = p.positive === false ? "−" : "+";
    if (p.type === "text") li.textContent = `text “${p.text}”`;
    else if (p.type === "point") li.textContent = `${sign} click (${p.xy.map(Math.round).join(", ")})`;
    else if (p.type === "box") li.textContent = `${sign} box (${p.xyxy.map(Math.round).join(", ")})`;
    else li.textContent = `${sign} scribble, ${p.path.length} points`;
    list.appendChild(li);
  }
}

function showResult() {
  const r = state.lastResult;
  $("result").textContent = r
    ? `${r.label || "(no label)"} · label ${(100 * (r.label_score || 0)).toFixed(0)}% · ${r.area} px`
    : "";
}

// ------------------------------------------------------------------ requests
async function upload(file) {
  setStatus(`Uploading ${file.name}…`);
  const response = await fetch("/v1/images", {
    method: "POST",
    headers: headers({ "Content-Type": file.type || "application/octet-stream" }),
    body: file,
  });
  if (!response.ok) { setStatus(await apiError(response), true); return; }
  const info = await response.json();
  const img = new Image();
  img.src = URL.createObjectURL(file);
  await img.decode();
  Object.assign(state, { imageId: info.image_id, width: info.width, height: info.height, image: img });
  for (const c of [imageCanvas, overlay]) { c.width = info.width; c.height = info.height; }
  // Small images are shown larger: clicks on a 200-px picture are hard to place.
  const shown = Math.max(info.width, Math.min(640, info.width * 3));
  imageCanvas.style.width = `${shown}px`;
  imageCanvas.getContext("2d").drawImage(img, 0, 0, info.width, info.height);
  reset();
  setStatus(`Image ${info.width} × ${info.height} ready${info.cached ? " (cached)" : ""}. Click on an object.`);
}

function requestBody() {
  const phrase = state.audio ? [{ type: "audio", data: state.audio }]
    : (state.text ? [{ type: "text", text: state.text }] : []);
  const prompts = phrase.concat(state.prompts);
  const body = { image_id: state.imageId, prompts, max_masks: 1 };
  if (state.lastMask) body.previous_mask = state.lastMask;
  return body;
}

async function segment() {
  if (!state.imageId) { setStatus("Choose an image first.", true); return; }
  if (!state.text && !state.audio && state.prompts.length === 0) { redraw(); return; }
  if (state.busy) { state.pending = true; return; }
  state.busy = true;
  try {
    do {
      state.pending = false;
      setStatus("Segmenting…");
      const t0 = performance.now();
      const response = await fetch("/v1/segment", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(requestBody()),
      });
      if (!response.ok) {
        const failed = response.clone();
        setStatus(await apiError(response), true);
        if (state.audio) await heard(failed);
        break;
      }
      const answer = await response.json();
      if (state.audio) heardText((answer.transcripts || [""])[0]);
      const best = answer.masks[0];
      state.round += 1;
      state.lastMask = best ? best.rle : null;
      state.lastResult = best || null;
      redraw();
      showResult();
      setStatus(`Round ${state.round}: ${(performance.now() - t0).toFixed(0)} ms ` +
                `(decode ${answer.timings_ms.decode.toFixed(1)} ms)`);
    } while (state.pending);
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

function reset() {
  Object.assign(state, { prompts: [], text: "", audio: null, transcript: null, lastMask: null, lastResult: null, round: 0, drag: null });
  $("text").value = "";
  $("transcript").textContent = "";
  renderPromptList();
  showResult();
  redraw();
}

// ------------------------------------------------------------------ pointer input
overlay.addEventListener("contextmenu", (e) => e.preventDefault());

overlay.addEventListener("pointerdown", (e) => {
  if (!state.imageId || state.drag) return;
  e.preventDefault();
  const xy = toImage(e);
  const positive = positiveFor(e);
  const t = tool();
  if (t === "point") { addPrompt({ type: "point", xy, positive }); return; }
  overlay.setPointerCapture(e.pointerId);
  const prompt = t === "box"
    ? { type: "box", xyxy: [xy[0], xy[1], xy[0], xy[1]], positive }
    : { type: "scribble", path: [xy], positive, width: 3 };
  state.drag = { start: xy, prompt };
});

overlay.addEventListener("pointermove", (e) => {
  if (!state.drag) return;
  const xy = toImage(e);
  const p = state.drag.prompt;
  if (p.type === "box") {
    const [sx, sy] = state.drag.start;
    p.xyxy = [Math.min(sx, xy[0]), Math.min(sy, xy[1]), Math.max(sx, xy[0]), Math.max(sy, xy[1])];
  } else {
    const last = p.path[p.path.length - 1];
    if (Math.hypot(xy[0] - last[0], xy[1] - last[1]) >= 2) p.path.push(xy);
  }
  redraw();
});

function endDrag() {
  if (!state.drag) return;
  const p = state.drag.prompt;
  state.drag = null;
  if (p.type === "box") {
    const [x0, y0, x1, y1] = p.xyxy;
    if (x1 - x0 < 2 || y1 - y0 < 2) {  // a box too small to mean anything: take it as a click
      addPrompt({ type: "point", xy: [x0, y0], positive: p.positive });
      return;
    }
  }
  addPrompt(p);
}
overlay.addEventListener("pointerup", endDrag);
overlay.addEventListener("pointercancel", () => { state.drag = null; redraw(); });

// ------------------------------------------------------------------ controls
$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) upload(file).catch((err) => setStatus(`Upload failed: ${err}`, true));
});

$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.text = $("text").value.trim();
  renderPromptList();
  segment();
});

$("undo").addEventListener("click", () => {
  if (state.prompts.length) state.prompts.pop();
  else state.text = "";
  // The last mask came from the prompt just removed: start the rounds again from scratch.
  state.lastMask = null; state.lastResult = null; state.round = 0;
  renderPromptList();
  showResult();
  redraw();
  segment();
});

$("reset").addEventListener("click", reset);

// ------------------------------------------------------------------ microphone
// Record a spoken phrase (MediaRecorder), send it as an audio prompt; the transcript the
// server returns is shown and becomes the phrase of the following rounds.
const RECORD_MS = 3000;  // a prompt is a short phrase; a second click stops earlier
let recorder = null;

function heardText(text) {
  state.audio = null;
  state.transcript = text;
  $("transcript").textContent = text ? `Heard: “${text}”` : "Heard nothing.";
  if (text) { state.text = text; $("text").value = text; renderPromptList(); }
}

async function heard(failedResponse) {
  let text = "";
  try { text = ((await failedResponse.json()).transcripts || [""])[0]; } catch (e) { /* not JSON */ }
  heardText(text);
}

function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function startRecording() {
  if (!state.imageId) { setStatus("Choose an image first.", true); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    setStatus(`No microphone: ${e.message || e}`, true);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    $("mic").textContent = "🎤 Speak";
    $("mic").setAttribute("aria-pressed", "false");
    state.audio = await blobToBase64(new Blob(chunks, { type: chunks.length ? chunks[0].type : "audio/webm" }));
    segment();
  };
  recorder.start();
  $("mic").textContent = "■ Stop";
  $("mic").setAttribute("aria-pressed", "true");
  setStatus("Listening…");
  setTimeout(() => { if (recorder && recorder.state === "recording") recorder.stop(); }, RECORD_MS);
}

$("mic").addEventListener("click", () => {
  if (recorder && recorder.state === "recording") recorder.stop();
  else startRecording();
});
