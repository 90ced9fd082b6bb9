r"""One self-contained HTML page: inline CSS, figures as base64 PNG ``data:`` URIs, no script, no
external resource, so the file opens offline and can be mailed or attached to an issue as is.

>>> slug("AdamW (torch)"), slug("Adam + L2 [epochs=3]"), slug("λ")
('adamw-torch', 'adam-l2-epochs-3', 'x')
>>> print(table_html(["method", "runs"], [["AdamW <torch>", 3]]))
<table>
<thead><tr><th>method</th><th>runs</th></tr></thead>
<tbody>
<tr><td>AdamW &lt;torch&gt;</td><td class="num">3</td></tr>
</tbody>
</table>
"""
from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

__all__ = ["HtmlFigure", "SLUG_MAX", "slug", "unique_slugs", "table_html", "prose_html", "definitions_html",
           "figure_html", "page"]


@dataclass(frozen=True)
class HtmlFigure:
    """A figure on the page: element id, alt text, caption and the PNG bytes."""

    id: str
    alt: str
    caption: str
    png: bytes


#: The longest slug: slugs name files (``heatmap-<slug>.png``), and a file name may have 255 bytes.
SLUG_MAX = 60


def slug(text: str) -> str:
    """A lower-case id made of ``a-z0-9`` and ``-`` (``"x"`` when nothing is left), at most
    :data:`SLUG_MAX` characters: a longer one is cut and ends in a hash of the whole text, so that
    two long labels that start alike still differ.

    >>> len(slug("a" * 300)), slug("a" * 300)[-9:] == slug("a" * 300 + "b")[-9:]
    (60, False)
    """
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
    if len(out) <= SLUG_MAX:
        return out
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return out[:SLUG_MAX - 9].rstrip("-") + "-" + digest


def unique_slugs(texts: Sequence[str]) -> list[str]:
    """Slugs of several texts, made unique with ``-2``, ``-3``, … suffixes.

    >>> unique_slugs(["AdamW", "adamw", "SGD"])
    ['adamw', 'adamw-2', 'sgd']
    """
    used: set[str] = set()
    out = []
    for text in texts:
        base = name = slug(text)
        k = 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        out.append(name)
    return out


_NUMBER = re.compile(r"^[+\-−]?\d[\d.]*(e[+\-]?\d+)?( ± \d[\d.]*(e[+\-]?\d+)?)?$|^–$")


def _is_number(value: Any) -> bool:
    """Numbers, and texts that are numbers (``1e-3``, ``95.00 ± 0.14``), are right-aligned."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or (isinstance(value, str) and bool(_NUMBER.match(value)))


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str | None = None) -> str:
    """An HTML table; numbers are right-aligned, everything is escaped."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{escape(str(v))}</td>' if _is_number(v) else f"<td>{escape(str(v))}</td>" for v in row
        )
        body.append(f"<tr>{cells}</tr>")
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return f"<table{ident}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def prose_html(text: str) -> str:
    """Plain text as paragraphs (a blank line starts a new one), escaped."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return "\n".join(f"<p>{escape(' '.join(p.split()))}</p>" for p in paragraphs)


def definitions_html(text: str) -> str:
    """Paragraphs that each start with a term ("Term. What it means ...") as a definition list.

    >>> print(definitions_html("Slope. How λ* moves with lr."))
    <dl>
    <dt>Slope</dt>
    <dd>How λ* moves with lr.</dd>
    </dl>
    """
    items = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        term, _, rest = " ".join(paragraph.split()).partition(". ")
        items.append(f"<dt>{escape(term)}</dt>\n<dd>{escape(rest)}</dd>")
    return "<dl>\n" + "\n".join(items) + "\n</dl>"


def figure_html(figure: HtmlFigure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    return (
        f'<figure>\n<img id="{escape(figure.id)}" alt="{escape(figure.alt)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption>{escape(figure.caption)}</figcaption>\n</figure>"
    )


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; color: #1d1d1f;
       max-width: 1240px; margin: 0 auto; padding: 1.5em 2em 3em; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
figure { margin: 0; max-width: 100%; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #444; max-width: 40em; margin-top: 0.3em; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
dt { font-weight: 600; margin-top: 0.6em; } dd { margin-left: 1.2em; }
"""


def page(title: str, meta: str, body: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: ``body`` is ``(section id, heading, inner HTML)`` triples."""
    sections = "\n".join(
        f'<section id="{escape(ident)}">\n<h2>{escape(heading)}</h2>\n{inner}\n</section>'
        for ident, heading, inner in body
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n<p class=\"meta\">{meta}</p>\n{sections}\n</body>\n</html>\n"
    )
