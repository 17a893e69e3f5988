// kontrast search page: vanilla JS, talks only to this server (GET/POST /search, /item/{id}, /thumb/{id}).
"use strict";

const $ = (id) => document.getElementById(id);
let queryImage = null; // File chosen or dropped as the image query
let lastText = ""; // text of the search whose results are shown (for the "where" view)

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function fileName(path) {
  const parts = path.split(/[\\/:]/);
  return parts[parts.length - 1] || path;
}

async function readJson(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    let detail = body && body.detail ? body.detail : response.statusText;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

async function loadStats() {
  try {
    const h = await readJson(await fetch("/health"));
    $("stats").textContent = `${h.items} items, ${h.images} images, ${h.captions} captions, ` +
      `model ${h.model_fingerprint}`;
  } catch (err) {
    $("stats").textContent = `index unavailable (${err.message})`;
  }
}

function renderResults(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of results) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "result";
    card.dataset.id = r.id;
    const img = document.createElement("img");
    img.src = r.thumb;
    img.alt = r.caption || fileName(r.path);
    img.loading = "lazy";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `#${r.rank}  ${r.score.toFixed(3)}`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = fileName(r.path);
    name.title = r.path;
    card.append(img, score, name);
    card.addEventListener("click", () => showDetails(r));
    grid.append(card);
  }
}

function field(list, label, value) {
  if (value === null || value === undefined || value === "") return;
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = String(value);
  list.append(dt, dd);
}

function showDetails(r) {
  const thumb = `/thumb/${r.id}?size=512`;
  $("detail-image").src = thumb;
  const where = $("detail-where");
  where.hidden = !lastText;
  where.setAttribute("aria-pressed", "false");
  where.textContent = `where is “${lastText}”?`;
  where.onclick = () => {
    const on = where.getAttribute("aria-pressed") !== "true";
    where.setAttribute("aria-pressed", String(on));
    $("detail-image").src = on ? `/locate/${r.id}?${new URLSearchParams({ q: lastText, size: 512 })}` : thumb;
  };
  $("detail-image").alt = r.caption || fileName(r.path);
  $("detail-open").href = r.image;
  const list = $("detail-fields");
  list.replaceChildren();
  field(list, "score", r.score.toFixed(4));
  field(list, "rank", r.rank);
  field(list, "path", r.path);
  field(list, "size", r.width ? `${r.width} x ${r.height} px` : null);
  field(list, "bytes", r.size);
  field(list, "caption", r.caption);
  field(list, "sha256", r.sha256);
  if (r.aliases && r.aliases.length) field(list, "duplicates", r.aliases.join(", "));
  $("details").hidden = false;
}

async function runSearch() {
  const q = $("q").value.trim();
  const k = $("k").value;
  const captions = $("captions").checked;
  const exclude = $("exclude").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!q && !queryImage) { setStatus("Type a query or drop an image."); return; }
  setStatus("searching\u2026");
  const started = performance.now();
  try {
    let response;
    if (queryImage) {
      const form = new FormData();
      form.append("file", queryImage, queryImage.name || "query");
      form.append("k", k);
      if (q) form.append("q", q);
      if (captions) form.append("captions", "true");
      for (const e of exclude) form.append("exclude", e);
      if (exclude.length && !q) form.append("exclude_threshold", "0.25");
      response = await fetch("/search", { method: "POST", body: form });
    } else {
      const params = new URLSearchParams({ q, k });
      if (captions) params.set("captions", "true");
      for (const e of exclude) params.append("exclude", e);
      response = await fetch(`/search?${params}`);
    }
    const body = await readJson(response);
    lastText = captions ? "" : q;
    renderResults(body.results);
    const ms = Math.round(performance.now() - started);
    setStatus(`${body.results.length} results in ${ms} ms`);
  } catch (err) {
    setStatus(`search failed: ${err.message}`, true);
  }
}

function setQueryImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { setStatus(`${file.name} is not an image`, true); return; }
  queryImage = file;
  const preview = $("query-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("clear-image").hidden = false;
  $("drop-text").textContent = file.name || "query image";
  runSearch();
}

function clearQueryImage(event) {
  event.stopPropagation();
  queryImage = null;
  $("query-preview").hidden = true;
  $("clear-image").hidden = true;
  $("file").value = "";
  $("drop-text").textContent = "Drop an image here, or click to choose one, to search by image";
}

function init() {
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("click", (e) => e.stopPropagation());
  $("file").addEventListener("change", () => setQueryImage($("file").files[0]));
  $("clear-image").addEventListener("click", clearQueryImage);
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => setQueryImage(e.dataTransfer.files[0]));
  $("close-details").addEventListener("click", () => { $("details").hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("details").hidden = true; });
  loadStats();
  $("q").focus();
}

document.addEventListener("DOMContentLoaded", init);
