"""``report.html``: the report as one self-contained page a person opens from disk.

Rendered from the same document model as ``report.md`` (:mod:`lungjax.evaluation.render.document`), with
every figure embedded as a base64 PNG and the style inline: no script, no font, no request to
anywhere, so the page shows the same on an air-gapped hospital workstation. Each number cell
carries ``data-keys``, the report.json paths of the numbers it shows, so a test can read the page
in a browser and check it against the JSON.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from lungjax.evaluation.render import document

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24;
       margin: 0 auto; max-width: 1320px; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-top: 8px; border-top: 1px solid #d0d7de; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; margin: 16px 0; }
nav a { margin-right: 14px; color: #0b57d0; text-decoration: none; white-space: nowrap; }
.scroll { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; white-space: nowrap; vertical-align: top; }
td .ci { display: block; color: #57606a; font-size: 12px; }
th { background: #f0f3f6; text-align: center; white-space: normal; min-width: 70px; }
td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafbfc; }
td.flag { color: #a40e26; font-weight: 600; }
td.muted { color: #6e7781; }
td.note { color: #6e7781; white-space: normal; text-align: left; min-width: 180px; }
figure { display: inline-block; vertical-align: top; margin: 12px 16px 24px 0; max-width: 100%; }
figure img { max-width: 100%; max-height: 540px; border: 1px solid #d0d7de; }
figure.wide { display: block; }
figure.wide img { max-height: none; }
figcaption { color: #57606a; font-size: 13px; margin-top: 4px; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 12px; overflow-x: auto; font-size: 12px; }
details summary { cursor: pointer; color: #0b57d0; }
code { background: #f0f3f6; padding: 0 3px; border-radius: 3px; }
"""
WIDE_FIGURE_PX = 1000  # a figure at least this wide (a panel grid, a gallery) gets the page's width
# Markdown emphasis inside paragraphs and cells, rendered as HTML after escaping.
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<strong>\1</strong>", escaped))


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _cell(cell: document.Cell) -> str:
    """A number cell, with its interval on a second, smaller line so that wide tables fit the page."""
    kind = None
    if cell.text.startswith("▼"):
        kind = "flag"
    elif cell.text.startswith(("too small", "n/a", "none")):
        kind = "muted"
    elif len(cell.text) > 40:
        kind = "note"
    attributes = f' class="{kind}"' if kind else ""
    if cell.keys:
        attributes += f" data-keys='{html.escape(json.dumps([list(k) for k in cell.keys]), quote=True)}'"
    value, bracket, interval = cell.text.partition(" [")
    content = _inline(value) + (f'<span class="ci">[{_inline(interval)}</span>' if bracket else "")
    return f"<td{attributes}>{content}</td>"


def _table(table: document.Table) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in table.header)
    rows = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'


def _paragraph(text: str) -> str:
    if text.startswith("- "):
        items = "".join(f"<li>{_inline(line[2:])}</li>" for line in text.splitlines())
        return f"<ul>{items}</ul>"
    return f"<p>{_inline(text)}</p>"


def _figure(path: Path, title: str) -> str:
    """An embedded PNG: single plots side by side at a common height, grids and galleries at full width."""
    png = path.read_bytes()
    width = int.from_bytes(png[16:20], "big")  # the IHDR chunk: width, then height
    data = base64.b64encode(png).decode("ascii")
    kind = ' class="wide"' if width >= WIDE_FIGURE_PX else ""
    return (
        f'<figure{kind}><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(title)} ({html.escape(path.name)})</figcaption></figure>"
    )


def render(doc: document.Document, folder: Path) -> str:
    """The page of a report's document; its figures are PNG names in ``folder``, embedded where they belong."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No request may leave the file: not even for a favicon.
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(doc.title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        *(_paragraph(p) for p in doc.intro),
        "<nav>\n"
        + "\n".join(f'<a href="#{_anchor(s.title)}">{html.escape(s.title)}</a>' for s in doc.sections)
        + "\n</nav>",
    ]
    for section in doc.sections:
        parts.append(f'<section id="{_anchor(section.title)}"><h2>{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, document.Table):
                parts.append(_table(block))
            elif isinstance(block, document.Code):
                parts.append(f"<details><summary>show</summary><pre>{html.escape(block.text)}</pre></details>")
            else:
                parts.append(_paragraph(block))
        parts += [_figure(folder / name, doc.figure_titles.get(name, name)) for name in section.figures]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
