// The captioner page: upload a photo, show its captions, and draw each word's attention as a
// smooth heat map over the photo (the paper's figure), computed here from the API's JSON.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, image: null, result: null, hyp: 0, word: -1, pinned: -1, model: null };
const CMAP = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
  [245, 125, 21], [250, 193, 39], [252, 255, 164]]; // inferno

function colour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (CMAP.length - 1), i = Math.min(Math.floor(x), CMAP.length - 2);
  const f = x - i, a = CMAP[i], b = CMAP[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

// Catmull-Rom bicubic upsampling of a g x g grid (row-major) to n x n, then scaled to [0, 1].
function upsample(values, g, n) {
  const out = new Float32Array(n * n), at = (r, c) =>
    values[Math.min(Math.max(r, 0), g - 1) * g + Math.min(Math.max(c, 0), g - 1)];
  const w = (t) => { const a = Math.abs(t);
    return a < 1 ? 1.5 * a ** 3 - 2.5 * a ** 2 + 1 : a < 2 ? -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2 : 0; };
  let max = 1e-12;
  for (let y = 0; y < n; y++) {
    const sy = (y + 0.5) * g / n - 0.5, y0 = Math.floor(sy);
    for (let x = 0; x < n; x++) {
      const sx = (x + 0.5) * g / n - 0.5, x0 = Math.floor(sx);
      let v = 0;
      for (let j = -1; j <= 2; j++) for (let i = -1; i <= 2; i++)
        v += at(y0 + j, x0 + i) * w(sy - y0 - j) * w(sx - x0 - i);
      v = Math.max(v, 0); out[y * n + x] = v; if (v > max) max = v;
    }
  }
  for (let k = 0; k < out.length; k++) out[k] /= max;
  return out;
}

// The heat layers of one word: a shade that dims where the word did not look, and a glow (drawn
// with "screen", which keeps the photo's detail) in the colour map where it did.
function heatLayers(values, g) {
  const n = 96, heat = upsample(values, g, n);
  const make = (pixel) => {
    const layer = document.createElement("canvas");
    layer.width = layer.height = n;
    const ctx = layer.getContext("2d"), img = ctx.createImageData(n, n);
    for (let k = 0; k < heat.length; k++) img.data.set(pixel(heat[k]), 4 * k);
    ctx.putImageData(img, 0, 0);
    return layer;
  };
  const shade = make((t) => [8, 6, 20, 255 * 0.62 * (1 - t) ** 1.3]);
  const glow = make((t) => { const [r, g2, b] = colour(0.15 + 0.85 * t), m = t ** 1.5;
    return [r * m, g2 * m, b * m, 255]; });
  return [shade, glow];
}

// Where the model's grid lies on the photo: all of it, or the centre crop it was given.
function modelRegion(w, h) {
  const pre = state.model && state.model.preprocess;
  if (!pre || !pre.crop) return [0, 0, w, h];
  const side = Math.min(w, h) * pre.crop / pre.resize;
  return [(w - side) / 2, (h - side) / 2, side, side];
}

function draw(canvas, values, scale) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  ctx.filter = "none";
  ctx.drawImage(state.image, 0, 0, w, h);
  if (!values) return;
  const g = state.result.grid, [x, y, rw, rh] = modelRegion(w, h);
  ctx.save();
  ctx.beginPath(); ctx.rect(x, y, rw, rh); ctx.clip();
  ctx.filter = `blur(${Math.max(1, Math.round(rw / g / 3 * scale))}px)`;
  const [shade, glow] = heatLayers(values, g), pad = [x - rw * 0.02, y - rh * 0.02, rw * 1.04, rh * 1.04];
  ctx.drawImage(shade, ...pad);
  ctx.globalCompositeOperation = "screen";
  ctx.drawImage(glow, ...pad);
  ctx.restore();
}

function fitCanvas(canvas, maxW, maxH, minSide) {
  const iw = state.image.naturalWidth, ih = state.image.naturalHeight;
  let s = Math.min(maxW / iw, maxH / ih);
  if (Math.max(iw, ih) * s < minSide) s = minSide / Math.max(iw, ih);
  const ratio = window.devicePixelRatio || 1;
  canvas.style.width = `${Math.round(iw * s)}px`; canvas.style.height = `${Math.round(ih * s)}px`;
  canvas.width = Math.round(iw * s * ratio); canvas.height = Math.round(ih * s * ratio);
}

function hyp() { return state.result && state.result.captions[state.hyp]; }

function showWord(i) {
  state.word = i;
  const h = hyp();
  draw($("photo"), i >= 0 && h ? h.attention[i] : null, 1);
  document.querySelectorAll(".word").forEach((el, k) => el.classList.toggle("active", k === i));
  document.querySelectorAll(".tile").forEach((el, k) => el.classList.toggle("active", k === i));
}

function wordEvents(el, i) {
  el.addEventListener("mouseenter", () => showWord(i));
  el.addEventListener("mouseleave", () => showWord(state.pinned));
  el.addEventListener("click", () => { state.pinned = state.pinned === i ? -1 : i; showWord(state.pinned); });
}

function renderHypothesis(k) {
  state.hyp = k; state.pinned = -1;
  const h = hyp(), caption = $("caption"), strip = $("strip");
  caption.replaceChildren(); strip.replaceChildren();
  h.words.forEach((word, i) => {
    const el = document.createElement("span");
    el.className = "word"; el.textContent = word; wordEvents(el, i);
    caption.append(el, " ");
    const tile = document.createElement("div"), c = document.createElement("canvas"),
      label = document.createElement("span");
    tile.className = "tile"; label.textContent = word;
    const ratio = window.devicePixelRatio || 1, iw = state.image.naturalWidth, ih = state.image.naturalHeight;
    const s = 84 / Math.max(iw, ih);
    c.style.width = `${Math.round(iw * s)}px`; c.style.height = `${Math.round(ih * s)}px`;
    c.width = Math.round(iw * s * ratio); c.height = Math.round(ih * s * ratio);
    tile.append(c, label); strip.append(tile); wordEvents(tile, i);
    draw(c, h.attention[i], 0.6);
  });
  document.querySelectorAll("#nbest-list li").forEach((el, j) => el.classList.toggle("active", j === k));
  showWord(-1);
}

function renderList() {
  const list = $("nbest-list"), caps = state.result.captions;
  list.replaceChildren();
  const best = caps[0].score, worst = caps[caps.length - 1].score;
  caps.forEach((c, k) => {
    const li = document.createElement("li"), text = document.createElement("span"),
      meta = document.createElement("span"), bar = document.createElement("span"), fill = document.createElement("i");
    text.className = "text"; text.textContent = c.text;
    meta.className = "meta"; bar.className = "bar";
    const share = caps.length > 1 && best > worst ? 0.25 + 0.75 * (c.score - worst) / (best - worst) : 1;
    fill.style.width = `${Math.round(share * 100)}%`; bar.append(fill);
    meta.append(`score ${c.score.toFixed(2)}`, bar, `p ${Math.exp(c.log_prob).toFixed(3)}`);
    li.title = `log-probability ${c.log_prob.toFixed(3)}`;
    li.append(text, meta); li.addEventListener("click", () => renderHypothesis(k));
    list.append(li);
  });
}

function showError(message) {
  const box = $("error");
  box.textContent = message; box.hidden = !message;
}

async function caption() {
  if (!state.file) return;
  const beam = +$("beam").value, nbest = Math.min(+$("nbest").value, beam);
  const query = new URLSearchParams({ beam_size: beam, n_best: nbest, length_penalty: $("lp").value });
  const form = new FormData(); form.append("images", state.file, state.file.name || "photo");
  $("busy").hidden = false; showError("");
  try {
    const response = await fetch(`/v1/captions?${query}`, { method: "POST", body: form });
    const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    const item = body.results && body.results[0];
    if (!response.ok || !item || item.error) throw new Error((item && item.error) || body.error);
    state.result = { captions: item.captions, grid: body.grid_size };
    renderList(); renderHypothesis(0);
    document.body.dataset.state = "captioned";
  } catch (err) {
    showError(String(err.message || err));
    document.body.dataset.state = "error";
  } finally { $("busy").hidden = true; }
}

function openFile(file) {
  if (!file) return;
  const url = URL.createObjectURL(file), img = new Image();
  img.onload = () => {
    if (state.image) URL.revokeObjectURL(state.image.src);
    state.file = file; state.image = img; state.result = null;
    $("drop").hidden = true; $("viewer").hidden = false;
    $("caption").replaceChildren(); $("strip").replaceChildren();
    fitCanvas($("photo"), 640, 460, 360); draw($("photo"), null, 1);
    caption();
  };
  img.onerror = () => { URL.revokeObjectURL(url); showError(`${file.name}: the browser cannot show this file as an image`); };
  img.src = url;
}

function bindControls() {
  let timer = 0;
  const sync = () => {
    $("beam-out").textContent = $("beam").value;
    $("lp-out").textContent = (+$("lp").value).toFixed(1);
    $("nbest").max = Math.min(10, +$("beam").value);
    $("nbest-out").textContent = Math.min(+$("nbest").value, +$("beam").value);
  };
  ["beam", "lp", "nbest"].forEach((id) => $(id).addEventListener("input", () => {
    sync(); clearTimeout(timer); timer = setTimeout(caption, 250);
  }));
  sync();
  $("file").addEventListener("change", (e) => { openFile(e.target.files[0]); e.target.value = ""; });
  const over = (on) => (e) => { e.preventDefault(); $("drop").classList.toggle("over", on); };
  ["dragenter", "dragover"].forEach((t) => document.addEventListener(t, over(true)));
  ["dragleave", "drop"].forEach((t) => document.addEventListener(t, over(false)));
  document.addEventListener("drop", (e) => openFile(e.dataTransfer.files[0]));
}

async function loadModel() {
  try {
    const m = await (await fetch("/v1/model")).json();
    state.model = m;
    const parts = [`${m.encoder} encoder`, `${m.attention} attention`, `${m.grid_size}×${m.grid_size} grid`,
      `${m.vocab_size} words`];
    if (m.trained_on && (m.trained_on.source || m.trained_on.data))
      parts.push(`trained on ${m.trained_on.source || m.trained_on.data}`);
    $("model").textContent = parts.join(" · ");
    if (m.limits) $("beam").max = m.limits.max_beam_size;
  } catch (err) { $("model").textContent = "model information unavailable"; }
}

bindControls();
loadModel();
