"""A standalone HTML copy of a markdown report: same content, figures embedded as data URIs.

The converter covers the markdown subset the report writes: ``#`` headings, pipe tables (with an
alignment row), paragraphs, ``![alt](file.png)`` images on a line of their own (an italic line
right after one becomes its caption), ``-`` lists, fenced code, and inline code, bold and italic.
Everything else is text, escaped. Images are read from the report's folder and inlined as
``data:`` URIs; nothing is fetched and nothing points outside the file, so it opens offline.
"""

from __future__ import annotations

import base64
import re
from html import escape, unescape
from pathlib import Path

from unirobust.io import atomic_write_text

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*$")
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_ITEM = re.compile(r"^[-*]\s+(.*)$")
_ALIGN_CELL = re.compile(r"^:?-+:?$")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.45;
       color: #1b1b1b; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; vertical-align: top; }
th { background: #f3f3f3; } td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; font-size: .9em; }
pre { background: #f6f6f6; padding: .7rem; overflow-x: auto; }
pre code { background: none; padding: 0; }
figure { margin: 1rem 0 1.6rem; } figure img { max-width: 100%; height: auto; }
figcaption { font-style: italic; color: #444; font-size: .92rem; max-width: 900px; }
.missing { color: #a00; }
""".strip()


def _inline(text: str) -> str:
    """Escape ``text`` and apply inline code, bold and italic (code spans are kept literal)."""
    spans: list[str] = []

    def keep(m: re.Match[str]) -> str:
        spans.append(f"<code>{escape(m.group(1), quote=False)}</code>")
        return f"\x00{len(spans) - 1}\x00"

    out = escape(_CODE_SPAN.sub(keep, text), quote=False)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    out = _ITALIC.sub(r"<em>\1</em>", out)
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], out)


def _cells(line: str) -> list[str]:
    """Cells of a pipe-table row; ``\\|`` is a literal pipe inside a cell."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


def _is_align_row(line: str) -> bool:
    cells = _cells(line)
    return line.strip().startswith("|") and all(_ALIGN_CELL.match(c) for c in cells)


def _table(header: list[str], align_row: str, rows: list[list[str]]) -> str:
    right = [c.endswith(":") for c in _cells(align_row)]

    def row(cells: list[str], tag: str) -> str:
        out = []
        for i, c in enumerate(cells):
            cls = ' class="r"' if i < len(right) and right[i] else ""
            out.append(f"<{tag}{cls}>{_inline(c)}</{tag}>")
        return "<tr>" + "".join(out) + "</tr>"

    body = "\n".join(row(r, "td") for r in rows)
    return f"<table>\n<thead>{row(header, 'th')}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def data_uri(src: str, base_dir: Path) -> str | None:
    """``data:`` URI of a local image relative to ``base_dir``; ``None`` for URLs or non-images."""
    if _SCHEME.match(src) or src.startswith("//"):
        return None  # a URL (http:, file:, ...) is never fetched nor linked
    path = base_dir / src
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return None
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(alt: str, src: str, caption: str | None, base_dir: Path) -> str:
    uri = data_uri(src, base_dir)
    if uri is None:
        img = f'<p class="missing">[figure not embedded: {escape(src)} is not a local image]</p>'
    else:
        img = f'<img src="{uri}" alt="{escape(alt)}">'
    cap = f"\n<figcaption>{_inline(caption)}</figcaption>" if caption else ""
    return f"<figure>\n{img}{cap}\n</figure>"


def _caption(line: str) -> str | None:
    """The text of a line that is wholly italic (``*...*``), else ``None``."""
    s = line.strip()
    if len(s) > 2 and s.startswith("*") and s.endswith("*") and not s.startswith("**"):
        return s[1:-1]
    return None


def markdown_to_html(text: str, base_dir: Path, title: str = "") -> str:
    """A complete HTML document for ``text``; images are read from ``base_dir`` and embedded."""
    lines = text.splitlines()
    body: list[str] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            body.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    i = 0
    while i < len(lines):
        s = lines[i].strip()
        heading, image, item = _HEADING.match(s), _IMAGE.match(s), _ITEM.match(s)
        if s.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            code = escape("\n".join(lines[i + 1 : j]), quote=False)
            body.append(f"<pre><code>{code}</code></pre>")
            i = j + 1
        elif not s:
            flush()
            i += 1
        elif heading:
            flush()
            level = len(heading.group(1))
            title = title or unescape(re.sub(r"<[^>]+>", "", _inline(heading.group(2))))
            body.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif s.startswith("|") and i + 1 < len(lines) and _is_align_row(lines[i + 1]):
            flush()
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            rows = [_cells(line) for line in lines[i + 2 : j]]
            body.append(_table(_cells(lines[i]), lines[i + 1], rows))
            i = j
        elif image:
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            caption = _caption(lines[j]) if j < len(lines) else None
            body.append(_figure(image.group(1), image.group(2), caption, base_dir))
            i = j + 1 if caption is not None else i + 1
        elif item:
            flush()
            items = []
            while i < len(lines) and (m := _ITEM.match(lines[i].strip())):
                items.append(f"<li>{_inline(m.group(1))}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            para.append(s)
            i += 1
    flush()
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title or 'unirobust report')}</title>\n<style>\n{_STYLE}\n</style>\n"
        "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def write_html(md_path: Path) -> Path:
    """Write the HTML copy of the markdown file ``md_path`` next to it (same stem, ``.html``)."""
    md_path = Path(md_path)
    html_path = md_path.with_suffix(".html")
    text = md_path.read_text(encoding="utf-8")
    atomic_write_text(html_path, markdown_to_html(text, md_path.parent))
    return html_path
