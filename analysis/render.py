"""The report's blocks rendered as markdown and as one self-contained HTML page."""

from __future__ import annotations

import html
from typing import Any, Sequence

from analysis.tables import display_cells, to_markdown

Block = tuple[str, Any]  # ("h1"|"h2"|"h3"|"p"|"list"|"table"|"figure", payload)


def markdown(blocks: Sequence[Block]) -> str:
    out = []
    for kind, x in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + x + "\n")
        elif kind == "p":
            out.append(x + "\n")
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in x) + "\n")
        elif kind == "table":
            out.append(to_markdown(x))
        elif kind == "figure":
            out.append(f"![{x[1]}]({x[0]})\n\n*{x[1]}* ([PDF]({x[0][:-4]}.pdf))\n")
    return "\n".join(out)


def html_page(blocks: Sequence[Block], title: str) -> str:
    e = html.escape
    body = []
    for kind, x in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{e(x)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{e(x)}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in x) + "</ul>")
        elif kind == "table":
            t = display_cells(x)
            head = "".join(f"<th>{e(c)}</th>" for c in t.columns)
            rows = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>"
                           for r in t.itertuples(index=False))
            body.append(f"<table><caption>{e(x.title)}</caption><thead><tr>{head}</tr></thead>"
                        f"<tbody>{rows}</tbody></table><p class='note'>{e(x.notes)}</p>")
        elif kind == "figure":
            body.append(f"<figure><img src='{e(x[0])}' alt='{e(x[1])}'><figcaption>{e(x[1])} "
                        f"(<a href='{e(x[0][:-4])}.pdf'>PDF</a>)</figcaption></figure>")
    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
           "table{border-collapse:collapse;margin:1em 0}td,th{padding:3px 10px;text-align:right}"
           "td:first-child,th:first-child{text-align:left}thead{border-bottom:1px solid #444}"
           "table{border-top:2px solid #444;border-bottom:2px solid #444}caption{font-weight:bold;"
           "text-align:left}.note{font-size:90%;color:#555}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{css}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
