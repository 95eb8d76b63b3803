// seem-ray web page, part 3: video. Load a video, pause on a frame, click the object or drag
// a box around it, "Propagate" (POST /v1/video/segment with the file and the prompts), then
// play: each presented frame gets its mask drawn over it. Uses app.js's and tools.js's globals.
"use strict";

const video = $("video");
const voverlay = $("video-overlay");
const vctx = voverlay.getContext("2d");
const DEFAULT_FPS = 25;  // when the browser cannot tell the rate (no requestVideoFrameCallback)
const VIDEO_OBJECT_ID = 1;

const vstate = {
  file: null,
  width: 0,
  height: 0,
  fps: DEFAULT_FPS,   // measured on load; the server's answer has the container's own
  prompts: [],        // prompts of the object, all on one frame
  promptTime: null,   // video.currentTime when the first of them was placed
  answer: null,       // the server's answer: {fps, width, height, frames}
  masks: new Map(),   // frame index -> decoded masks of that frame
  drawn: new Set(),   // frames drawn with an answer (what playback has shown)
  drag: null,
  busy: false,
  ready: false,
};
state.video = vstate;

function videoStatus(text, isError) {
  const el = $("video-status");
  el.textContent = text;
  el.classList.toggle("error", !!isError);
}

function fps() { return vstate.answer ? vstate.answer.fps : vstate.fps; }

// Frame k is shown from k / fps seconds on (the server maps time_s the same way).
function frameAt(t) { return Math.floor(t * fps() + 1e-6); }

function frameMasks(index) {
  if (!vstate.masks.has(index)) {
    const frame = vstate.answer.frames[index];
    vstate.masks.set(index, frame ? frame.objects.filter((o) => o.present).map((o) => decodeRle(o.rle)) : []);
  }
  return vstate.masks.get(index);
}

function drawVideoOverlay(index) {
  const { width: w, height: h } = vstate;
  vctx.clearRect(0, 0, voverlay.width, voverlay.height);
  let painted = 0;
  if (vstate.answer && index < vstate.answer.frames.length) {
    const masks = frameMasks(index);
    if (masks.length) vctx.putImageData(paintLayers(masks.map((m) => ({ mask: m, fill: MASK_RGBA, edge: EDGE_RGBA })), w, h), 0, 0);
    painted = masks.reduce((n, m) => n + area(m), 0);
    vstate.drawn.add(index);
  }
  const onPromptFrame = vstate.promptTime !== null && frameAt(vstate.promptTime) === index;
  if (!vstate.answer || onPromptFrame) vstate.prompts.forEach((p) => drawPrompt(p, vctx, w));
  if (vstate.drag) drawPrompt(vstate.drag.prompt, vctx, w);
  voverlay.dataset.frame = String(index);
  voverlay.dataset.maskArea = String(painted);
  const total = vstate.answer ? ` / ${vstate.answer.frames.length}` : "";
  $("video-position").textContent = `frame ${index + 1}${total} · ${video.currentTime.toFixed(2)} s`;
  if (video.duration) $("video-seek").value = String(Math.round(1000 * video.currentTime / video.duration));
}

function redrawVideo() {
  if (!vstate.ready) return;
  // At the very end currentTime is the duration: one past the last frame.
  const last = vstate.answer ? vstate.answer.frames.length - 1 : Math.max(0, frameAt(video.duration) - 1);
  drawVideoOverlay(Math.min(frameAt(video.currentTime), last));
}

function onPresentedFrame(now, meta) {
  if (vstate.ready && !vstate.measuring) drawVideoOverlay(frameAt(meta.mediaTime));
  video.requestVideoFrameCallback(onPresentedFrame);
}

function renderVideoPrompts() {
  const list = $("video-prompts");
  list.innerHTML = "";
  vstate.prompts.forEach((p, i) => {
    const li = document.createElement("li");
    li.textContent = `${describe(p)} on frame ${frameAt(vstate.promptTime) + 1}`;
    li.appendChild(removeButton("remove this prompt", () => {
      vstate.prompts.splice(i, 1);
      if (!vstate.prompts.length) vstate.promptTime = null;
      renderVideoPrompts();
      redrawVideo();
    }));
    list.appendChild(li);
  });
  $("video-propagate").disabled = !vstate.prompts.length;
  $("video-clear").disabled = !vstate.prompts.length;
}

function loadVideo(file) {
  Object.assign(vstate, { file, prompts: [], promptTime: null, answer: null, masks: new Map(), drawn: new Set(),
    drag: null, ready: false });
  renderVideoPrompts();
  videoStatus(`Loading ${file.name}…`);
  video.src = URL.createObjectURL(file);
}

// Browsers do not say a video's frame rate: play the first few frames muted and time them
// (their presentation timestamps), then go back to the start.
function measureFps() {
  return new Promise((resolve) => {
    if (!("requestVideoFrameCallback" in video)) { resolve(DEFAULT_FPS); return; }
    const times = [];
    const done = () => {
      video.pause();
      const steps = times.slice(1).map((t, i) => t - times[i]).filter((d) => d > 0).sort((a, b) => a - b);
      resolve(steps.length ? 1 / steps[Math.floor(steps.length / 2)] : DEFAULT_FPS);
    };
    const onFrame = (now, meta) => {
      times.push(meta.mediaTime);
      if (times.length >= 4 || video.ended) done(); else video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    video.addEventListener("ended", done, { once: true });
    video.play().catch(() => resolve(DEFAULT_FPS));
  });
}

video.addEventListener("loadeddata", async () => {
  if (vstate.ready || vstate.measuring) return;
  vstate.measuring = true;
  const measured = await measureFps();
  vstate.measuring = false;
  video.currentTime = 0;
  vstate.fps = Math.round(measured * 1000) / 1000;
  Object.assign(vstate, { width: video.videoWidth, height: video.videoHeight, ready: true });
  voverlay.width = vstate.width; voverlay.height = vstate.height;
  // Small videos are shown larger, as images are.
  video.style.width = `${Math.max(vstate.width, Math.min(640, vstate.width * 3))}px`;
  for (const id of ["video-play", "video-prev", "video-next", "video-seek"]) $(id).disabled = false;
  redrawVideo();
  videoStatus(`${vstate.width} × ${vstate.height}, ${video.duration.toFixed(1)} s, about ${vstate.fps.toFixed(1)} fps. ` +
              "Pause on a frame and click the object.");
});

video.addEventListener("error", () => {
  videoStatus("This browser cannot play the file; the server may still read it, but the page cannot show it.", true);
});

video.addEventListener("seeked", redrawVideo);
video.addEventListener("play", () => { $("video-play").textContent = "Pause"; });
video.addEventListener("pause", () => { $("video-play").textContent = "Play"; redrawVideo(); });
if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(onPresentedFrame);
else video.addEventListener("timeupdate", redrawVideo);  // coarser: a few times a second

// ------------------------------------------------------------------ prompts on a frame
function addVideoPrompt(p) {
  const here = frameAt(video.currentTime);
  if (vstate.promptTime !== null && frameAt(vstate.promptTime) !== here) {
    videoStatus(`The object's prompts all go on one frame (frame ${frameAt(vstate.promptTime) + 1}): ` +
                "go back to it, or clear the prompts first.", true);
    return;
  }
  if (vstate.promptTime === null) vstate.promptTime = video.currentTime;
  vstate.prompts.push(p);
  vstate.answer = null;  // the masks came from other prompts
  vstate.masks = new Map();
  renderVideoPrompts();
  redrawVideo();
  videoStatus(`${vstate.prompts.length} prompt${vstate.prompts.length > 1 ? "s" : ""} on frame ${here + 1}. ` +
              "Add more, or Propagate.");
}

voverlay.addEventListener("contextmenu", (e) => e.preventDefault());

voverlay.addEventListener("pointerdown", (e) => {
  if (!vstate.ready || vstate.drag) return;
  e.preventDefault();
  video.pause();
  voverlay.setPointerCapture(e.pointerId);
  const xy = toImage(e, voverlay, vstate.width, vstate.height);
  vstate.drag = { start: xy, prompt: { type: "box", xyxy: [xy[0], xy[1], xy[0], xy[1]], positive: positiveFor(e) } };
});

voverlay.addEventListener("pointermove", (e) => {
  if (!vstate.drag) return;
  const [sx, sy] = vstate.drag.start;
  const [x, y] = toImage(e, voverlay, vstate.width, vstate.height);
  vstate.drag.prompt.xyxy = [Math.min(sx, x), Math.min(sy, y), Math.max(sx, x), Math.max(sy, y)];
  redrawVideo();
});

voverlay.addEventListener("pointerup", () => {
  if (!vstate.drag) return;
  const { start, prompt } = vstate.drag;
  vstate.drag = null;
  const [x0, y0, x1, y1] = prompt.xyxy;
  // A drag too small to be a box is a click (positive unless Shift / right button).
  if (x1 - x0 < 2 || y1 - y0 < 2) addVideoPrompt({ type: "point", xy: start, positive: prompt.positive });
  else if (prompt.positive) addVideoPrompt({ type: "box", xyxy: prompt.xyxy });
  else videoStatus("A box is always positive: drag it around the object.", true);
});

// ------------------------------------------------------------------ propagation
async function propagate() {
  if (!vstate.file || !vstate.prompts.length || vstate.busy) return;
  vstate.busy = true;
  $("video-propagate").disabled = true;
  try {
    videoStatus("Propagating through every frame…");
    const body = withVocabulary({ video: await blobToBase64(vstate.file),
      objects: [{ object_id: VIDEO_OBJECT_ID, time_s: vstate.promptTime, prompts: vstate.prompts }] });
    const t0 = performance.now();
    const response = await postJson("/v1/video/segment", body);
    if (!response.ok) { videoStatus(await apiError(response), true); return; }
    const answer = await response.json();
    Object.assign(vstate, { answer, masks: new Map(), drawn: new Set() });
    const seen = answer.frames.filter((f) => f.objects.some((o) => o.present)).length;
    const ms = performance.now() - t0;
    logLatency(`video, ${answer.frames.length} frames`, ms, answer.timings_ms);
    videoStatus(`${answer.frames.length} frames (${answer.fps.toFixed(1)} fps) in ${(ms / 1000).toFixed(1)} s; ` +
                `the object is on ${seen} of them. Press Play.`);
    redrawVideo();
  } catch (e) {
    videoStatus(`Request failed: ${e.message || e}`, true);
  } finally {
    vstate.busy = false;
    $("video-propagate").disabled = !vstate.prompts.length;
  }
}

// ------------------------------------------------------------------ controls
function stepFrame(delta) {
  video.pause();
  const last = Math.max(0, frameAt(video.duration) - 1);
  const target = Math.min(Math.max(frameAt(video.currentTime) + delta, 0), last);
  video.currentTime = (target + 0.5) / fps();  // the middle of the frame: no rounding onto its neighbour
}

$("video-file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) loadVideo(file);
});
$("video-play").addEventListener("click", () => {
  if (video.paused) video.play().catch((err) => videoStatus(`Cannot play: ${err.message || err}`, true));
  else video.pause();
});
$("video-prev").addEventListener("click", () => stepFrame(-1));
$("video-next").addEventListener("click", () => stepFrame(1));
$("video-seek").addEventListener("input", (e) => {
  video.pause();
  if (video.duration) video.currentTime = Number(e.target.value) / 1000 * video.duration;
});
$("video-propagate").addEventListener("click", propagate);
$("video-clear").addEventListener("click", () => {
  Object.assign(vstate, { prompts: [], promptTime: null, answer: null, masks: new Map(), drawn: new Set() });
  renderVideoPrompts();
  redrawVideo();
  videoStatus("Prompts cleared.");
});
