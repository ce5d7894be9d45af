"""Headless Chromium (Debian's ``chromium``) for the bulletin's layout tests: screenshots,
and layout facts measured by the browser itself.

``layout(page, width)`` opens a copy of the page with a small measuring script appended
(the bulletin itself has none) and reads back what the browser laid out: the page's
height and width, every header or cell whose text runs over more lines than it should, and
every table, chart or card row that sticks out of the window.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

#: Measured after load; written into the DOM, read with --dump-dom. A header may hold its
#: unit on a second line (<small>); any other extra line is a wrap. Cells marked "wrap"
#: (lists of devices) may wrap between their items.
_PROBE = """<script>
addEventListener("load", () => {
  const lines = (node) => {
    const r = document.createRange(); r.selectNodeContents(node);
    return new Set([...r.getClientRects()].filter(x => x.width > 0)
      .map(x => Math.round(x.top))).size;
  };
  const view = document.documentElement.clientWidth;
  const out = {height: document.documentElement.scrollHeight,
               width: document.documentElement.scrollWidth, view, wraps: [], outside: [],
               tables: document.querySelectorAll("table").length,
               charts: document.querySelectorAll("svg.chart").length,
               meta: (document.querySelector(".meta") || {}).textContent || ""};
  for (const c of document.querySelectorAll("th, td")) {
    if (c.classList.contains("wrap")) continue;
    const small = c.querySelector("small");
    const parts = small ? [...c.childNodes].filter(n => n.nodeName !== "BR") : [c];
    for (const p of parts) {
      if (p.nodeType === 3 && !p.textContent.trim()) continue;
      if (lines(p) > 1) { out.wraps.push(c.tagName + ": " + c.textContent); break; }
    }
  }
  for (const e of document.querySelectorAll("table, svg.chart, .cards, nav")) {
    const b = e.getBoundingClientRect();
    if (b.width > 0 && b.right > view + 0.5) {
      const s = e.closest("section");
      out.outside.push((s ? s.id : e.tagName) + " " + e.tagName + " right=" + Math.round(b.right));
    }
  }
  const pre = document.createElement("pre"); pre.id = "layout-facts";
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>"""

_BASE = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Debian's chromium is needed (apt-get install -y chromium fonts-wqy-zenhei)"
    return found


def _run(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), *_BASE, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def layout(page: Path, width: int, work: Path, css: str = "") -> dict[str, Any]:
    """The layout facts of ``page`` in a window ``width`` px wide; ``css`` is added to the
    page first (e.g. the print rules, to lay it out as on paper)."""
    text = page.read_text(encoding="utf-8")
    probe = work / f"probe-{width}-{page.name}"
    style = f"<style>{css}</style>" if css else ""
    probe.write_text(
        text.replace("</head>", style + "</head>", 1).replace("</body>", _PROBE + "</body>", 1),
        encoding="utf-8",
    )
    run = _run(
        [f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom",
         probe.resolve().as_uri()],
        work / "profile",
    )  # fmt: skip
    m = re.search(r'<pre id="layout-facts">(.*?)</pre>', run.stdout, re.S)
    assert m, f"no layout facts from chromium: {run.stderr[-2000:]}"
    facts: dict[str, Any] = json.loads(html.unescape(m[1]))
    return facts


def screenshot(page: Path, out: Path, width: int, height: int, work: Path) -> str:
    """A PNG of the top ``height`` px of ``page``; returns chromium's log (stderr)."""
    run = _run(
        ["--enable-logging=stderr", "--v=0", f"--screenshot={out}",
         f"--window-size={width},{height}", page.resolve().as_uri()],
        work / "profile",
    )  # fmt: skip
    return run.stderr
