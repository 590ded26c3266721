"""The upload page at ``GET /`` of ``deqa serve``: pick photos, see each score and level distribution.

One self-contained HTML document (no external script, style or font, so it works offline). The
page posts the chosen files to ``/score`` as multipart ``image`` fields (with the API key from its
key field as ``X-API-Key`` when the server needs one) and draws, per image, a thumbnail, the score
on 1..5 with its predicted std, and a bar per quality level; a per-image error is shown in its
place. Element ids the tests read: ``#files``, ``#status``, ``#results`` (one ``.result`` per
image with ``.score``, ``.std``, ``.bar[data-level]``, or ``.error``; an ``img.thumb`` preview for the
scored ones).
"""

from __future__ import annotations

import html

from deqa import LEVELS

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>deqa: image quality score</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; padding: 0 1rem; color: #1c1c1c; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  .muted { color: #666; }
  form { margin: 1.2rem 0; padding: 1rem; border: 1px dashed #999; border-radius: 8px; }
  #status { min-height: 1.4em; margin: .5rem 0; }
  .result { display: flex; gap: 1.2rem; align-items: flex-start; padding: .9rem 0; border-top: 1px solid #ddd; }
  .thumb { flex: none; width: 160px; height: 160px; object-fit: contain; background: #f2f2f2; border-radius: 4px; }
  .name { font-weight: 600; word-break: break-all; }
  .score { font-size: 2rem; font-weight: 700; }
  .error { color: #b00020; }
  .dist { display: grid; grid-template-columns: 5.5rem 1fr 3.5rem; gap: .25rem .5rem; align-items: center; margin-top: .4rem; min-width: 20rem; }
  .track { background: #eee; height: .9rem; border-radius: 3px; }
  .bar { background: #3a6ea5; height: 100%; border-radius: 3px; }
</style>
</head>
<body>
<h1>deqa: image quality</h1>
<p class="muted">Model <code>__MODEL__</code>. Scores run from 1 (bad) to 5 (excellent); the bars show
the predicted distribution over the five quality levels. API: <a href="docs">/docs</a>.</p>
<form id="form">
  <label>Photos: <input id="files" type="file" name="image" accept="image/*" multiple></label>
  <label __KEY_HIDDEN__>API key: <input id="key" type="password" autocomplete="off"></label>
</form>
<div id="status" role="status"></div>
<div id="results"></div>
<script>
"use strict";
const LEVELS = __LEVELS__;
const files = document.getElementById("files");
const status = document.getElementById("status");
const results = document.getElementById("results");

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function show(file, row) {
  const box = el("div", "result");
  if (row.error) {
    box.appendChild(el("div", "thumb"));  // no preview of what the server could not read
  } else {
    const img = el("img", "thumb");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    box.appendChild(img);
  }
  const info = el("div");
  info.appendChild(el("div", "name", file.name));
  if (row.error) {
    info.appendChild(el("div", "error", row.error));
  } else {
    info.appendChild(el("span", "score", row.score.toFixed(2)));
    info.appendChild(el("span", "std muted", " \\u00b1 " + row.std.toFixed(2)));
    const dist = el("div", "dist");
    for (const level of LEVELS) {
      const p = row["p_" + level];
      dist.appendChild(el("span", "level", level));
      const track = el("div", "track");
      const bar = el("div", "bar");
      bar.dataset.level = level;
      bar.style.width = (100 * p).toFixed(1) + "%";
      track.appendChild(bar);
      dist.appendChild(track);
      dist.appendChild(el("span", "pct", (100 * p).toFixed(1) + "%"));
    }
    info.appendChild(dist);
  }
  box.appendChild(info);
  results.appendChild(box);
}

async function score() {
  const chosen = Array.from(files.files);
  if (!chosen.length) return;
  const body = new FormData();
  for (const f of chosen) body.append("image", f, f.name);
  const headers = {};
  const key = document.getElementById("key").value;
  if (key) headers["X-API-Key"] = key;
  status.textContent = "scoring " + chosen.length + " image(s)\\u2026";
  results.textContent = "";
  try {
    const r = await fetch("score", { method: "POST", body: body, headers: headers });
    const answer = await r.json();
    if (!r.ok) {
      status.textContent = "error " + r.status + ": " + (answer.error || r.statusText);
      return;
    }
    answer.results.forEach((row, i) => show(chosen[i], row));
    status.textContent = "scored " + chosen.length + " image(s)";
  } catch (err) {
    status.textContent = "error: " + err;
  }
}
files.addEventListener("change", score);
</script>
</body>
</html>
"""


def upload_page(model: str, needs_key: bool) -> str:
    """The page's HTML for ``model`` (its name, shown), with a key field when the server needs one."""
    levels = "[" + ", ".join(f'"{lv}"' for lv in LEVELS) + "]"
    return (
        _PAGE.replace("__MODEL__", html.escape(model))
        .replace("__LEVELS__", levels)
        .replace("__KEY_HIDDEN__", "" if needs_key else "hidden")
    )
