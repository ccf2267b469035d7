"""``review.html``: a run's report as a page people look at, the doubtful masks first.

Written next to ``report.csv`` at the end of every run: a static page opened from disk in any browser (no server, no
network, no script or style from elsewhere) with

* the run's summary: counts by status and by quality flag, the model and the settings;
* histograms of the lung fraction and of ``qc_score`` (inline SVG);
* every ``ok`` input as a thumbnail of its overlay, worst ``qc_score`` first, each linked to its full-size overlay,
  mask and DICOM SEG, with filters by status and flag; the inputs not taken for frontal chest radiographs (other
  body parts, lateral views: skipped by the frontal-chest check) are listed in a group of their own with what they
  were taken for, and the failed and other skipped inputs with their reasons.

The rows are in ``review_rows.js`` beside the page (a script, as browsers load from disk what they would not fetch),
a few hundred bytes each; the page shows them a page of 48 at a time and loads only the thumbnails it shows, so it
stays usable for 100,000 inputs.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter

from ..io.files import atomic_write

__all__ = ["PAGE_NAME", "ROWS_NAME", "write_review_page"]

PAGE_NAME = "review.html"
ROWS_NAME = "review_rows.js"
_FIELDS = (
    "input",
    "status",
    "qc_score",
    "quality_flags",
    "lung_fraction",
    "overlay",
    "mask_png",
    "seg_dicom",
    "reason",
    "taken_as",
)


def _element(tag: str, content: str = "", **attributes) -> str:
    """An SVG or HTML element with escaped attribute values (``class_`` for ``class``, ``aria_label`` for
    ``aria-label``)."""
    attrs = "".join(" " + name.rstrip("_").replace("_", "-") + '="' + html.escape(str(value)) + '"'
                    for name, value in attributes.items())  # fmt: skip
    return f"<{tag}{attrs}>{content}</{tag}>"


def _histogram(values: list[float], low: float, high: float, bins: int = 20, label: str = "") -> str:
    """An inline SVG bar chart of ``values`` in ``bins`` equal bins over ``[low, high]``."""
    counts = [0] * bins
    for value in values:
        if value is None:
            continue
        index = int((min(max(float(value), low), high) - low) / (high - low) * bins)
        counts[min(index, bins - 1)] += 1
    top = max(counts) or 1
    width, height, bar = 420, 140, 420 / bins
    parts = []
    for i, count in enumerate(counts):
        tall = count / top * (height - 30)
        start, stop = low + i * (high - low) / bins, low + (i + 1) * (high - low) / bins
        tip = _element("title", html.escape(f"{start:.2f}-{stop:.2f}: {count}"))
        parts.append(
            _element("rect", tip, x=f"{i * bar + 1:.1f}", y=f"{height - 20 - tall:.1f}", width=f"{bar - 2:.1f}",
                     height=f"{tall:.1f}", fill="#4a7bd0")
        )  # fmt: skip
    for x, text in ((0, f"{low:g}"), (width - 24, f"{high:g}"), (width / 2 - 40, label)):
        parts.append(_element("text", html.escape(text), x=x, y=height - 4, font_size=11))
    return _element("svg", "".join(parts), width=width, height=height, role="img", aria_label=label)


def _compact(row: dict) -> list:
    """A report row as the page's array: the fields it shows, in :data:`_FIELDS` order."""
    out = []
    for field in _FIELDS:
        value = row.get(field)
        if field == "quality_flags":
            value = list(value or [])
        elif field == "qc_score" or field == "lung_fraction":
            value = None if value in (None, "") else float(value)
        elif value is not None:
            value = str(value)
        out.append(value)
    return out


def write_review_page(output_dir: str, rows: list[dict], summary: dict, settings: dict | None) -> str:
    """Write ``review.html`` and ``review_rows.js`` into ``output_dir``; return the page's path."""
    flags = Counter(flag for row in rows for flag in (row.get("quality_flags") or []))
    ok = [row for row in rows if row.get("status") == "ok"]
    fractions = [row.get("lung_fraction") for row in ok if row.get("lung_fraction") is not None]
    scores = [row.get("qc_score") for row in ok if row.get("qc_score") is not None]
    counts = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{summary.get(name, 0)}</td></tr>"
        for name in ("files_found", "ok", "skipped", "failed", "reused_from_previous_run")
    )
    flag_rows = "".join(f"<tr><td>{html.escape(f)}</td><td>{n}</td></tr>" for f, n in sorted(flags.items()))
    data = "const REVIEW_FIELDS = " + json.dumps(_FIELDS) + ";\nconst REVIEW_ROWS = [\n"
    data += ",\n".join(json.dumps(_compact(row), separators=(",", ":")) for row in rows) + "\n];\n"
    page = _PAGE.format(
        counts=counts,
        flags=flag_rows or "<tr><td colspan=2>none</td></tr>",
        flag_options="".join(_element("option", html.escape(f), value=f) for f in sorted(flags)),
        settings=html.escape(json.dumps(settings or {}, indent=1, default=str)),
        fraction_histogram=_histogram(fractions, 0.0, 1.0, label="lung fraction"),
        score_histogram=_histogram(scores, 0.0, 1.0, label="qc_score"),
        rows_script=ROWS_NAME,
    )
    atomic_write(os.path.join(output_dir, ROWS_NAME), lambda tmp: _write(tmp, data))
    return atomic_write(os.path.join(output_dir, PAGE_NAME), lambda tmp: _write(tmp, page))


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Lung segmentation run: review</title>
<style>
body {{ font-family: sans-serif; margin: 1em 2em; color: #222; }}
table {{ border-collapse: collapse; margin-right: 2em; }} td, th {{ border: 1px solid #ccc; padding: 2px 8px; }}
.top {{ display: flex; flex-wrap: wrap; align-items: flex-start; gap: 1em; }}
#grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 10px; }}
.card {{ border: 1px solid #ccc; padding: 4px; font-size: 12px; }} .card img {{ width: 100%; height: 200px;
object-fit: contain; background: #000; }} .bad {{ color: #b00; }} .name {{ overflow-wrap: anywhere; }}
pre {{ max-height: 12em; overflow: auto; background: #f6f6f6; padding: 4px; }}
</style></head><body>
<h1>Lung segmentation run</h1>
<p>Masks are sorted by <b>qc_score</b>, the model's own estimate of the mask's Dice, worst first: check the first
ones. Research use only.</p>
<div class="top">
<table><tr><th>files</th><th>count</th></tr>{counts}</table>
<table><tr><th>quality flag</th><th>inputs</th></tr>{flags}</table>
<div><div>{score_histogram}</div><div>{fraction_histogram}</div></div>
<details><summary>settings and model</summary><pre>{settings}</pre></details>
</div>
<p>
<label>status <select id="status"><option value="">any</option><option>ok</option><option>skipped</option>
<option>failed</option></select></label>
<label>flag <select id="flag"><option value="">any</option>{flag_options}</select></label>
<button id="prev">previous</button> <span id="position"></span> <button id="next">next</button>
</p>
<div id="grid"></div>
<table id="not_chests"></table>
<table id="problems"></table>
<script src="{rows_script}"></script>
<script>
const PAGE_SIZE = 48;
const F = Object.fromEntries(REVIEW_FIELDS.map((name, i) => [name, i]));
let shown = [], page = 0;
function esc(text) {{
  return String(text ?? "").replace(/[&<>"']/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
    "'": "&#39;"}})[c]);
}}
function link(path, text) {{ return path ? `<a href="${{encodeURI(path)}}">${{text}}</a>` : ""; }}
function select() {{
  const status = document.getElementById("status").value, flag = document.getElementById("flag").value;
  shown = REVIEW_ROWS.filter(r => (!status || r[F.status] === status) && (!flag || r[F.quality_flags].includes(flag)));
  // worst qc_score first; inputs without a score (skipped, failed) after the scored ones
  shown.sort((a, b) => (a[F.qc_score] ?? 2) - (b[F.qc_score] ?? 2));
  page = 0;
  render();
}}
function render() {{
  const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
  page = Math.min(Math.max(page, 0), pages - 1);
  const rows = shown.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
  document.getElementById("position").textContent = `page ${{page + 1}} of ${{pages}} (${{shown.length}} inputs)`;
  document.getElementById("grid").innerHTML = rows.filter(r => r[F.status] === "ok").map(r => `
    <div class="card" data-qc="${{r[F.qc_score]}}"><a href="${{encodeURI(r[F.overlay] || "")}}">
    <img loading="lazy" alt="overlay of ${{esc(r[F.input])}}" src="${{encodeURI(r[F.overlay] || "")}}"></a>
    <div class="name">${{esc(r[F.input])}}</div>
    <div>qc_score <b>${{r[F.qc_score] ?? "-"}}</b>, lung fraction ${{r[F.lung_fraction] ?? "-"}}</div>
    <div class="bad">${{esc(r[F.quality_flags].join(", "))}}</div>
    <div>${{link(r[F.overlay], "overlay")}} ${{link(r[F.mask_png], "mask")}} ${{link(r[F.seg_dicom], "SEG")}}</div>
    </div>`).join("");
  const notChest = r => r[F.status] === "skipped" && String(r[F.taken_as] ?? "").startsWith("not a frontal chest");
  const others = rows.filter(notChest);
  document.getElementById("not_chests").innerHTML = others.length ?
    "<caption>not taken for frontal chest radiographs (skipped: no mask, no SEG)</caption>" +
    "<tr><th>input</th><th>taken for</th></tr>" + others.map(r => `<tr class="not-chest"><td>${{esc(r[F.input])}}</td>
    <td>${{esc(r[F.taken_as])}}</td></tr>`).join("") : "";
  const problems = rows.filter(r => r[F.status] !== "ok" && !notChest(r));
  document.getElementById("problems").innerHTML = problems.length ? "<caption>failed and skipped inputs</caption>" +
    "<tr><th>input</th><th>status</th>" +
    "<th>reason</th></tr>" + problems.map(r => `<tr class="problem"><td>${{esc(r[F.input])}}</td>
    <td>${{r[F.status]}}</td><td>${{esc(r[F.reason])}}</td></tr>`).join("") : "";
}}
document.getElementById("status").onchange = select;
document.getElementById("flag").onchange = select;
document.getElementById("prev").onclick = () => {{ page -= 1; render(); }};
document.getElementById("next").onclick = () => {{ page += 1; render(); }};
select();
</script>
</body></html>
"""
