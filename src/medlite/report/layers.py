"""The report's per-layer section: for each variant, where its time goes and which layers run in
int8 or in float, from the bench stage's `layers/<variant>.json` (`medlite.bench.layers`).

Its own template partial (`templates/layers.html.j2`), rendered here and placed into the page by
`report.build`; its own figure (a bar picture per variant).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

COLOURS = {"int8": "#2e8b57", "fp16": "#e08a1e", "fp32": "#4a78b5", "convert": "#9a9a9a"}
TOP = 12


def layer_sections(root: Path, results: dict, folder: Path) -> list[dict]:
    """One entry per variant with a per-layer view: its operator table, totals, latency source, figure."""
    sections = []
    for v in results["variants"]:
        summary = (v.get("bench") or {}).get("layers") or {}
        if summary.get("error"):
            sections.append({"variant": v["name"], "format": v.get("format"), "error": summary["error"]})
            continue
        path = root / summary["file"] if summary.get("file") else None
        if path is None or not path.is_file():
            continue
        view = json.loads(path.read_text())
        sections.append({"variant": v["name"], "format": v.get("format"), "ops": view["ops"], "totals": view["totals"],
                         "latency": view["latency"], "inserted": len(view.get("inserted") or []),
                         "figure": layer_figure(v["name"], view, folder)})
    return sections


def layer_figure(name: str, view: dict, folder: Path) -> dict:
    """Horizontal bars, one per layer (the TOP by latency share, else by MACs, and in an int8 file every
    layer with MACs that stayed float), coloured by the precision each runs in."""
    from medlite.report import figures

    timed = bool(view["latency"].get("available"))
    rows = [l for l in view["layers"] if l["precision"] != "convert" or (l.get("share") or 0) > 0]
    rows += [dict(r, op=f"{r['op']} (inserted)") for r in view.get("inserted") or []]
    if timed:
        values = [(l.get("share") or 0.0, l) for l in rows]
    else:
        total = sum(l.get("macs") or 0 for l in rows) or 1
        values = [((l.get("macs") or 0) / total, l) for l in rows]
    ranked = sorted(values, key=lambda p: -p[0])
    values = ranked[:TOP]
    if view["totals"].get("int8_layers"):  # an int8 file: the layers with MACs that stayed float are always shown
        stayed = set(view["totals"].get("float_mac_layers") or [])
        values += [p for p in ranked[TOP:] if p[1]["name"] in stayed]
    values = values[::-1]
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(6.2, 0.22 * max(len(values), 3) + 0.9))
    def label(l: dict) -> str:  # LiteRT layer names already carry their operator ("5:CONV_2D")
        text = l["name"][-22:] if l["op"] in l["name"] else f"{l['name'][-22:]} {l['op']}"
        return text + ("/dw" if l.get("kind") == "depthwise" and "DEPTHWISE" not in l["op"] else "")

    labels = [label(l) for _, l in values]
    ax.barh(range(len(values)), [100 * x for x, _ in values], color=[COLOURS.get(l["precision"], "#666") for _, l in values])
    ax.set_yticks(range(len(values)), labels, fontsize=6)
    ax.set_xlabel("share of kernel time (%)" if timed else "share of MACs (%): no per-op latency for this runtime")
    from matplotlib.patches import Patch

    used = sorted({l["precision"] for _, l in values})
    ax.legend(handles=[Patch(color=COLOURS[p], label=p) for p in used if p in COLOURS], fontsize=6, loc="lower right")
    ax.set_title(f"{name}: where the {'time' if timed else 'arithmetic'} goes ({len(values)} of {len(rows)} layers)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return figures.save(fig, folder, f"layers_{figures.safe_stem(name)}")


def render_section(sections: list[dict]) -> str:
    """The section's HTML (autoescaped), for the page to place as it is."""
    from jinja2 import Environment, select_autoescape

    from medlite.bench.layers import _count

    template = (resources.files("medlite") / "report" / "templates" / "layers.html.j2").read_text()
    env = Environment(autoescape=select_autoescape(default=True))
    env.filters["bytes"] = lambda n: f"{_count(n)}B"
    env.filters["count"] = _count
    env.filters["share"] = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    return env.from_string(template).render(sections=sections, top=TOP)
