"""Render a report in a real headless browser (Chromium) and check what it shows.

:func:`render_check` runs Chromium twice on a local HTML file, with no network, no profile and no
GPU:

1. ``--dump-dom`` on a throw-away copy of the page with a probe script appended (the report itself
   has no script): at ``load`` (after every image has loaded or failed) the probe writes each
   ``<img>``'s decoded size (0 when it is broken), the page height and the section ids into the
   DOM, which Chromium prints;
2. ``--screenshot`` of the report itself, the window as tall as the page (capped), saved as PNG.

The check passes when Chromium exits 0, every image decoded with a non-zero size, every expected
section id is present and the screenshot is not blank (enough pixels differ from the page
background). Chromium is found as ``$DEQA_CHROMIUM`` or ``chromium`` / ``chromium-browser`` /
``google-chrome`` on ``PATH`` (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)

PROBE = """<script>
window.addEventListener("load", function () {
  var pre = document.createElement("pre");
  pre.id = "deqa-render-check";
  pre.textContent = JSON.stringify({
    height: document.documentElement.scrollHeight,
    images: Array.prototype.map.call(document.images, function (im) {
      return [im.alt, im.complete ? im.naturalWidth : 0, im.complete ? im.naturalHeight : 0];
    }),
    sections: Array.prototype.map.call(document.querySelectorAll("section[id]"), function (s) { return s.id; })
  });
  document.body.appendChild(pre);
});
</script>"""

_PROBE_OUT = re.compile(r'<pre id="deqa-render-check">(.*?)</pre>', re.S)


def find_chromium() -> str | None:
    """The Chromium executable, or ``None`` when none is installed."""
    named = os.environ.get("DEQA_CHROMIUM")
    if named:
        return named if shutil.which(named) else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@dataclass
class RenderCheck:
    """What the browser showed; ``problems`` is empty when the page rendered fully."""

    screenshot: Path
    height: int = 0
    images: list[tuple[str, int, int]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    ink_share: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def broken_images(self) -> list[str]:
        return [alt for alt, w, h in self.images if not (w > 0 and h > 0)]


def _chromium(binary: str, args: list[str], url: str, timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="deqa-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def ink_share(png: Path) -> float:
    """Share of the screenshot's pixels that differ visibly from its most common colour."""
    from PIL import Image

    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.int32).reshape(-1, 3)
    packed = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    common = int(np.bincount(packed).argmax())
    background = np.array([common >> 16, (common >> 8) & 255, common & 255])
    return float((np.abs(pixels - background).max(axis=1) > 24).mean())


def probe(page: Path, binary: str, width: int = 1280, timeout: float = 120.0) -> dict:
    """Images, height and section ids of ``page`` as Chromium laid it out (see module doc)."""
    text = page.read_text(encoding="utf-8")
    if "</body>" not in text:
        raise ValueError(f"{page}: no </body> tag to append the probe to")
    with tempfile.TemporaryDirectory(prefix="deqa-probe-") as tmp:
        copy = Path(tmp) / page.name
        copy.write_text(text.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
        args = [f"--window-size={width},900", "--virtual-time-budget=3000", "--dump-dom"]
        proc = _chromium(binary, args, copy.resolve().as_uri(), timeout)
    found = _PROBE_OUT.search(proc.stdout)
    if proc.returncode != 0 or not found:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"chromium --dump-dom of {page} gave no probe result (exit {proc.returncode}): {tail}")
    return json.loads(html.unescape(found.group(1)))


def render_check(
    page: str | Path,
    screenshot: str | Path,
    sections: tuple[str, ...] = (),
    width: int = 1280,
    max_height: int = 16000,
    min_ink: float = 0.03,
    timeout: float = 120.0,
) -> RenderCheck:
    """Render ``page`` headless, save a full-height PNG to ``screenshot`` and check it."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (set DEQA_CHROMIUM or install chromium)")
    page, screenshot = Path(page), Path(screenshot)
    info = probe(page, binary, width, timeout)
    check = RenderCheck(screenshot, int(info["height"]), [tuple(i) for i in info["images"]], list(info["sections"]))
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    height = max(200, min(check.height, max_height))
    proc = _chromium(
        binary,
        [f"--window-size={width},{height}", f"--screenshot={screenshot.resolve()}"],
        page.resolve().as_uri(),
        timeout,
    )
    if proc.returncode != 0 or not screenshot.exists():
        check.problems.append(f"screenshot failed (exit {proc.returncode})")
        return check
    check.ink_share = ink_share(screenshot)
    if not check.images:
        check.problems.append("the page has no <img>")
    if check.broken_images:
        check.problems.append(
            f"{len(check.broken_images)} image(s) did not decode: {', '.join(check.broken_images[:5])}"
        )
    missing = [s for s in sections if s not in check.sections]
    if missing:
        check.problems.append(f"section(s) missing: {', '.join(missing)}")
    if check.ink_share < min_ink:
        check.problems.append(f"screenshot looks blank ({check.ink_share:.1%} of pixels differ from the background)")
    return check
