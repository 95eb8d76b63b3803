// seem-ray web page, part 2: the input tools (click, box, scribble, polygon, mask brush), the
// referring region from a second image, the downloads and the controls. Uses app.js's globals.
"use strict";

// ------------------------------------------------------------------ pointer input
const POLYGON_CLOSE_PX = 10;  // a click this close (screen pixels) to the first corner closes it

function brushWidth() { return Math.max(4, Math.round(Math.min(state.width, state.height) / 16)); }

function startDrag(e, xy, positive, t) {
  overlay.setPointerCapture(e.pointerId);
  let prompt;
  if (t === "box") prompt = { type: "box", xyxy: [xy[0], xy[1], xy[0], xy[1]], positive };
  else if (t === "scribble") prompt = { type: "scribble", path: [xy], positive, width: 3 };
  else prompt = { type: "mask", positive, _path: [xy], _brush: brushWidth() };
  state.drag = { start: xy, prompt };
  redraw();
}

function polygonClick(event, xy, positive) {
  if (!state.poly) { state.poly = { type: "polygon", points: [xy], positive }; redraw(); return; }
  const first = state.poly.points[0];
  const r = overlay.getBoundingClientRect();
  const screenDist = Math.hypot((xy[0] - first[0]) * r.width / state.width, (xy[1] - first[1]) * r.height / state.height);
  if (state.poly.points.length >= 3 && screenDist <= POLYGON_CLOSE_PX) { closePolygon(); return; }
  state.poly.points.push(xy);
  redraw();
}

function closePolygon() {
  const p = state.poly;
  state.poly = null;
  if (!p || p.points.length < 3) { redraw(); setStatus("A polygon needs at least 3 corners.", true); return; }
  addPrompt(p);
}

overlay.addEventListener("contextmenu", (e) => e.preventDefault());

overlay.addEventListener("pointerdown", (e) => {
  if (!state.imageId || state.drag) return;
  e.preventDefault();
  overlay.focus();
  const xy = toImage(e, overlay, state.width, state.height);
  const positive = positiveFor(e);
  const t = tool();
  if (t !== "polygon" && state.poly) state.poly = null;
  if (t === "point") addPrompt({ type: "point", xy, positive });
  else if (t === "polygon") polygonClick(e, xy, positive);
  else startDrag(e, xy, positive, t);
});

overlay.addEventListener("dblclick", (e) => {
  // The double-click's own two clicks have added two corners at the same place: drop one.
  if (!state.poly) return;
  e.preventDefault();
  const pts = state.poly.points;
  if (pts.length > 1) pts.pop();
  closePolygon();
});

overlay.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && state.poly) { e.preventDefault(); closePolygon(); }
  if (e.key === "Escape" && state.poly) { state.poly = null; redraw(); }
});

overlay.addEventListener("pointermove", (e) => {
  if (!state.drag) return;
  const xy = toImage(e, overlay, state.width, state.height);
  const p = state.drag.prompt;
  if (p.type === "box") {
    const [sx, sy] = state.drag.start;
    p.xyxy = [Math.min(sx, xy[0]), Math.min(sy, xy[1]), Math.max(sx, xy[0]), Math.max(sy, xy[1])];
  } else {
    const path = p.path || p._path;
    const last = path[path.length - 1];
    if (Math.hypot(xy[0] - last[0], xy[1] - last[1]) >= 2) path.push(xy);
  }
  redraw();
});

function brushMask(p) {
  const mask = rasterize((ctx) => {
    ctx.lineWidth = p._brush; ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    p._path.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (p._path.length === 1) ctx.lineTo(p._path[0][0] + 0.1, p._path[0][1]);
    ctx.stroke();
  });
  p._area = area(mask);
  p.rle = encodeRle(mask, state.height, state.width);
  return p;
}

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
  addPrompt(p.type === "mask" ? brushMask(p) : p);
}
overlay.addEventListener("pointerup", endDrag);
overlay.addEventListener("pointercancel", () => { state.drag = null; redraw(); });

// ------------------------------------------------------------------ referring region
const refCanvas = $("ref-canvas");
const rctx = refCanvas.getContext("2d");

function drawReference() {
  const ref = state.reference;
  if (!ref) return;
  rctx.drawImage(ref.image, 0, 0, ref.width, ref.height);
  if (ref.box) {
    const [x0, y0, x1, y1] = ref.box;
    rctx.lineWidth = Math.max(1.5, ref.width / 150);
    rctx.strokeStyle = "#ffeb3b";
    rctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  }
  $("ref-use").disabled = !ref.box;
}

async function openReference(blob, name) {
  setStatus(`Uploading reference ${name}…`);
  const info = await uploadImage(blob);
  state.reference = Object.assign(info, { name, box: null, drag: null });
  refCanvas.width = info.width; refCanvas.height = info.height;
  drawReference();
  setStatus(`Reference ${info.width} × ${info.height} ready: drag a box around a thing in it.`);
}

refCanvas.addEventListener("pointerdown", (e) => {
  const ref = state.reference;
  if (!ref) return;
  e.preventDefault();
  refCanvas.setPointerCapture(e.pointerId);
  ref.drag = toImage(e, refCanvas, ref.width, ref.height);
  ref.box = null;
  drawReference();
});

refCanvas.addEventListener("pointermove", (e) => {
  const ref = state.reference;
  if (!ref || !ref.drag) return;
  const [sx, sy] = ref.drag;
  const [x, y] = toImage(e, refCanvas, ref.width, ref.height);
  ref.box = [Math.min(sx, x), Math.min(sy, y), Math.max(sx, x), Math.max(sy, y)];
  drawReference();
});

refCanvas.addEventListener("pointerup", () => {
  const ref = state.reference;
  if (!ref) return;
  ref.drag = null;
  if (ref.box && (ref.box[2] - ref.box[0] < 2 || ref.box[3] - ref.box[1] < 2)) ref.box = null;
  drawReference();
});

$("ref-use").addEventListener("click", () => {
  const ref = state.reference;
  if (!ref || !ref.box) return;
  if (!state.imageId) { setStatus("Choose the main image first.", true); return; }
  addPrompt({ type: "referring", image_id: ref.imageId, region: { type: "box", xyxy: ref.box.slice() } });
});

// ------------------------------------------------------------------ downloads
// Every kept object, then the current one (drawn last, so it wins where they overlap).
function allMasks() {
  const items = state.objects.slice();
  if (state.lastMask && state.lastResult) {
    const r = state.lastResult;
    items.push({ rle: state.lastMask, label: r.label, score: r.score, area: r.area, bbox: r.bbox,
      color: currentColor() });
  }
  return items;
}

function saveBlob(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function baseName() { return (state.imageName || "image").replace(/\.[^.]*$/, ""); }

function downloadPng() {
  const items = allMasks();
  if (!items.length) { setStatus("Nothing to download yet: segment something first.", true); return; }
  const c = document.createElement("canvas");
  c.width = state.width; c.height = state.height;
  const layers = items.map((o) => ({ mask: maskOf(o), fill: o.color.concat([255]) }));
  const img = paintLayers(layers, state.width, state.height);
  for (let i = 3; i < img.data.length; i += 4) img.data[i] = 255;  // opaque black background
  c.getContext("2d").putImageData(img, 0, 0);
  c.toBlob((blob) => saveBlob(blob, `${baseName()}-masks.png`), "image/png");
  setStatus(`Saved ${items.length} mask${items.length > 1 ? "s" : ""} as PNG (one colour each, as in the list).`);
}

function cocoJson(items) {
  const names = [...new Set(items.map((o) => o.label || "object"))];
  return {
    info: { description: "seem-ray web page", date_created: new Date().toISOString() },
    images: [{ id: 1, file_name: state.imageName || "image", width: state.width, height: state.height }],
    categories: names.map((name, i) => ({ id: i + 1, name })),
    annotations: items.map((o, i) => ({
      id: i + 1, image_id: 1, category_id: names.indexOf(o.label || "object") + 1,
      segmentation: { size: o.rle.size, counts: o.rle.counts }, area: o.area, bbox: o.bbox,
      iscrowd: 0, score: o.score, color: o.color })),
  };
}

function downloadCoco() {
  const items = allMasks();
  if (!items.length) { setStatus("Nothing to download yet: segment something first.", true); return; }
  const blob = new Blob([JSON.stringify(cocoJson(items), null, 1)], { type: "application/json" });
  saveBlob(blob, `${baseName()}-masks.json`);
  setStatus(`Saved ${items.length} mask${items.length > 1 ? "s" : ""} as COCO JSON.`);
}

// ------------------------------------------------------------------ controls
function fail(what) { return (err) => setStatus(`${what} failed: ${err.message || err}`, true); }

// A file input and sample buttons that open an image with `open(blob, name)`.
function wireImageInputs(fileInput, sampleSelector, open, what) {
  fileInput.addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) open(file, file.name).catch(fail(what));
  });
  for (const b of document.querySelectorAll(sampleSelector)) {
    b.addEventListener("click", () => fetchSample(b.dataset.src)
      .then((blob) => open(blob, b.dataset.src.split("/").pop())).catch(fail(`${what} (sample)`)));
  }
}

wireImageInputs($("file"), ".sample", openImage, "Upload");
wireImageInputs($("ref-file"), ".ref-sample", openReference, "Reference upload");

$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const phrase = $("text").value.trim();
  if (!phrase) return;
  // The phrase joins the current object only when asked to; Enter means a new object.
  if (!e.submitter || e.submitter.id !== "text-go") newObject();
  state.text = phrase;
  $("text").value = phrase;
  renderPromptList();
  segment();
});

$("undo").addEventListener("click", () => {
  if (state.prompts.length) state.prompts.pop();
  else state.text = "";
  restartRounds();
});

$("new-object").addEventListener("click", newObject);
$("reset").addEventListener("click", reset);
$("everything").addEventListener("click", segmentEverything);
$("download-png").addEventListener("click", downloadPng);
$("download-coco").addEventListener("click", downloadCoco);
refresh();

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
