"""``erasekit report RUN_DIR``: one self-contained HTML page of an evaluation or attack run; and :func:`image_grid`,
the labelled PNG grid of ``erasekit generate`` and ``erasekit demo``.

The page needs nothing but itself: images are inlined as base64 PNG, plots are inline SVG drawn here (no plotting
library), styles are inline. It shows the headline numbers per variant (accuracies per role and the papers' harmonic
means, NudeNet counts, CLIP score, FID/KID, LPIPS), accuracy against the number of erased concepts, before/after
image grids per concept and role, every number of ``results.json``, and the config with the pinned protocols.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .eval.results import Results, load_rows, load_run
from .eval.sampling import ImageCache
from .io import atomic_file

REPORT_FILE = "report.html"
GRID_ROWS = 4  # prompts shown per (set, concept, role) group
GRID_GROUPS = 24  # groups shown in all
THUMB = 112  # displayed image size in CSS pixels (small images are upscaled, pixelated)
ROLE_ORDER = ("erase", "synonym", "indirect", "retain", "scene", "target", "remaining")
COLORS = ("#c0392b", "#2471a3", "#7d3c98", "#1e8449", "#b9770e", "#566573")
# image_grid, the PNG grid: cells of at least MIN_CELL pixels, a label column, HEADER_LINES of prompt text per column
MIN_CELL = 128  # smaller images (tiny test models) are upscaled, pixel for pixel, to at least this size
LABEL_WIDTH = 72  # left column with the row labels ("base", "erased")
HEADER_LINES = 2  # lines of prompt text above each column
FONT_SIZE = 12
LINE_HEIGHT = FONT_SIZE + 2
PAD = 4
HEADER_HEIGHT = HEADER_LINES * LINE_HEIGHT + 2 * PAD
CSS = f"""
body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}}
h1{{font-size:22px}}h2{{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}}
h3{{font-size:15px}}table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}th{{background:#f4f6f7}}
td:first-child,th:first-child{{text-align:left}}.muted{{color:#777}}
.grid{{display:grid;gap:4px;align-items:start;margin-bottom:16px}}.cell{{font-size:11px;overflow-wrap:anywhere}}
.cell img{{width:{THUMB}px;height:{THUMB}px;image-rendering:pixelated;display:block;border:1px solid #ccc}}
pre{{background:#f8f9f9;padding:8px;overflow:auto;font-size:12px}}
"""


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{100 * value:.2f}" if percent else f"{value:.4g}"
    return html.escape(str(value))


def _png(cache: ImageCache, key: str) -> str:
    """The cached PNG as a data URI; images larger than twice the displayed size are downscaled first."""
    image = cache.load(key)
    if max(image.size) > 2 * THUMB:
        image.thumbnail((2 * THUMB, 2 * THUMB), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = cache.path(key).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def headline_tables(results: Results) -> str:
    """Accuracy per family and role (%), with the harmonic means; then the other metrics' main numbers."""
    variants = list(results["variants"])
    out = []
    families = sorted({f for v in variants for f in results.metrics(v).get("accuracy", {}).get("families", {})})
    for family in families:
        entries = [results.metrics(v).get("accuracy", {}).get("families", {}).get(family, {}) for v in variants]
        roles = [r for r in ROLE_ORDER if any(r in e.get("acc", {}) for e in entries)]
        scores = sorted({k for e in entries for k in e if k.startswith("H")})
        rows = [[f"Acc {role} (%)", *(_fmt(e.get("acc", {}).get(role), True) for e in entries)] for role in roles]
        rows += [[f"n {role}", *(_fmt(e.get("n", {}).get(role)) for e in entries)] for role in roles]
        rows += [[f"{s} (%)", *(f"<b>{_fmt(e.get(s), True)}</b>" for e in entries)] for s in scores]
        out.append(f"<h3>Accuracy: {html.escape(family)}</h3>" + _table(["", *variants], rows))
    other = []
    for variant in variants:
        m = results.metrics(variant)
        if "nudenet" in m:
            other.append(("NudeNet detections (total)", variant, m["nudenet"]["total_detections"]))
            other.append(("NudeNet images with any (%)", variant, 100 * m["nudenet"]["nudity_rate"]))
        for role, value in m.get("clip_score", {}).get("by_role", {}).items():
            other.append((f"CLIP score, {role}", variant, value))
        if "H_a" in m.get("clip_score", {}):
            other.append(("H_a = CLIP_s - CLIP_e", variant, m["clip_score"]["H_a"]))
        for name in ("fid", "kid"):
            if name in m:
                other.append((name.upper(), variant, m[name][name]))
        for role, value in m.get("lpips", {}).get("by_role", {}).items():
            other.append((f"LPIPS to base, {role}", variant, value))
    if other:
        names = list(dict.fromkeys(name for name, _, _ in other))
        values = {(name, variant): value for name, variant, value in other}
        rows = [[name, *(_fmt(values.get((name, v))) for v in variants)] for name in names]
        out.append("<h3>Other metrics</h3>" + _table(["", *variants], rows))
    nudenet = {v: results.metrics(v)["nudenet"] for v in variants if "nudenet" in results.metrics(v)}
    if nudenet:
        classes = list(next(iter(nudenet.values()))["detections"])
        counts = nudenet.values()
        rows = [[c.removesuffix("_EXPOSED").lower(), *(f"{n['detections'][c]} ({n['images'][c]})" for n in counts)]
                for c in classes]  # fmt: skip
        out.append(
            "<h3>NudeNet detections per class (images)</h3>"
            "<p class=muted>Detections counted as in MACE Table 2 / GLoCE Table 3; images with at least one in "
            "brackets.</p>" + _table(["", *nudenet], rows)
        )
    return "".join(out) or "<p class=muted>No metrics in this run.</p>"


def attack_tables(results: Results) -> str:
    """Attack success rates (``erasekit attack``): per attack and variant, then per concept; empty for evaluations."""
    variants = [v for v in results["variants"] if "attack" in results.metrics(v)]
    if not variants:
        return ""
    labels = list(dict.fromkeys(a for v in variants for a in results.metrics(v)["attack"]))

    def cell(variant: str, label: str, concept: str | None = None) -> str:
        entry = results.metrics(variant)["attack"].get(label)
        if entry is None:
            return "–"
        if not entry.get("applicable", True):
            return f"<span title='{html.escape(entry.get('note', ''))}'>n/a</span>"
        if concept is not None:
            entry = entry["per_concept"].get(concept)
            if entry is None:
                return "–"
        return _fmt(entry["asr"], True)

    out = [
        "<h3>Attack success rate (%)</h3><p class=muted>ASR = (pre-attack successes + attack successes) / N; "
        "no_attack is the plain prompts. Lower is more robust.</p>",
        _table(["attack", *variants], [[label, *(cell(v, label) for v in variants)] for label in labels]),
    ]
    concepts = list(dict.fromkeys(c for v in variants for e in results.metrics(v)["attack"].values()
                                  for c in e.get("per_concept", {})))  # fmt: skip
    rows = [[f"{html.escape(c)} · {label}", *(cell(v, label, c) for v in variants)]
            for c in concepts for label in labels]  # fmt: skip
    out.append("<h3>Attack success rate per concept (%)</h3>" + _table(["concept · attack", *variants], rows))
    return "".join(out)


def line_plot(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, title: str) -> str:
    """An inline SVG line chart (y in percent, 0-100; x categorical) with one coloured line and legend entry per
    series."""
    width, height, left, right, top, bottom = 520, 280, 52, 150, 28, 40
    xs = sorted({x for points in series.values() for x, _ in points})
    slot = (width - left - right - 20) / max(len(xs) - 1, 1)

    def px(x: float) -> float:
        """Evenly spaced by rank, so that 1, 10 and 100 erased concepts are equally readable."""
        return left + 10 + slot * xs.index(x)

    def py(y: float) -> float:
        return top + (height - top - bottom) * (1 - y / 100)

    parts = [f'<text x="{width / 2 - 60}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for tick in range(0, 101, 25):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(tick)}" y2="{py(tick)}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 6}" y="{py(tick) + 4}" font-size="11" text-anchor="end">{tick}</text>')
    for x in xs:
        parts.append(f'<text x="{px(x)}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">{x:g}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{py(0)}" y2="{py(0)}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{py(0)}" y2="{py(100)}" stroke="#333"/>')
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" font-size="12" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
    )
    parts.append(
        f'<text transform="translate(14,{(top + height - bottom) / 2}) rotate(-90)" font-size="12" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    for k, (name, points) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        points = sorted(points)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"/>' for x, y in points]
        ly = top + 8 + 18 * k
        parts.append(f'<rect x="{width - right + 12}" y="{ly - 8}" width="12" height="4" fill="{color}"/>')
        parts.append(f'<text x="{width - right + 30}" y="{ly - 2}" font-size="12">{html.escape(name)}</text>')
    body = "".join(parts)
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{body}</svg>'


def accuracy_plots(results: Results) -> str:
    """Per family: accuracy of each role against the number of erased concepts (the base at 0)."""
    points: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for variant in results["variants"].values():
        n = 0 if variant["edit"] is None else len(variant["concepts"])
        for family, entry in variant["metrics"].get("accuracy", {}).get("families", {}).items():
            for role, acc in entry.get("acc", {}).items():
                points[family][f"Acc {role}"].append((n, 100 * acc))
            for score in (k for k in entry if k.startswith("H")):
                points[family][score].append((n, 100 * entry[score]))
    plots = [
        line_plot(series, "number of erased concepts", "accuracy (%)", f"{family}")
        for family, series in sorted(points.items())
    ]
    return "".join(plots) or "<p class=muted>No accuracy metric in this run.</p>"


def image_grids(results: Results, rows: list[dict[str, Any]], show_explicit: bool = False) -> str:
    """Before/after images: for each (set, concept, role) group, a few prompts, one column per variant.

    Images of the explicit family (I2P) are left out unless ``show_explicit``: the page may be shared.
    """
    cache = ImageCache(results["cache_dir"])
    variants = list(results["variants"])
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        role = row["variants"][next(v for v in reversed(variants) if v in row["variants"])]["role"]
        groups[(row["set"], row["concept"], role)].append(row)
    ordered = sorted(groups.items(), key=lambda g: (ROLE_ORDER.index(g[0][2]) if g[0][2] in ROLE_ORDER else 99, g[0]))
    out = []
    for (set_name, concept, role), members in ordered[:GRID_GROUPS]:
        cells = [f"<div class=cell><b>{html.escape(v)}</b></div>" for v in ["prompt", *variants]]
        for row in members[:GRID_ROWS]:
            cells.append(f"<div class=cell>{html.escape(row['prompt'][:120])}<br>seed {row['seed']}</div>")
            for v in variants:
                entry = row["variants"].get(v, {})
                key = entry.get("key")
                if key is None:  # an attack run attacks each variant on its own erased concepts only
                    img = "(not attacked)"
                elif row["family"] == "explicit" and not show_explicit:
                    img = "(explicit: hidden, see --show-explicit)"
                elif key in cache:
                    img = f'<img src="{_png(cache, key)}" alt="{html.escape(v)}">'
                else:
                    img = "(missing from the image cache)"
                note = " / ".join(entry["prediction"]) if entry.get("prediction") else ""
                cells.append(f"<div class=cell>{img}{html.escape(note)}</div>")
        columns = f"grid-template-columns:220px repeat({len(variants)},{THUMB + 8}px)"
        title = f"{set_name} · {concept or '(no concept)'} · {role}"
        out.append(f"<h3>{html.escape(title)}</h3><div class=grid style='{columns}'>{''.join(cells)}</div>")
    if len(ordered) > GRID_GROUPS:
        out.append(f"<p class=muted>{len(ordered) - GRID_GROUPS} more groups not shown.</p>")
    return "".join(out)


def all_numbers(results: Results) -> str:
    flat = results.flat()
    variants = list(flat)
    paths = list(dict.fromkeys(p for values in flat.values() for p in values))
    rows = [[html.escape(p), *(_fmt(flat[v].get(p)) for v in variants)] for p in paths]
    return f"<details><summary>{len(paths)} values</summary>{_table(['metric', *variants], rows)}</details>"


def _names(concepts: list[str], shown: int = 3) -> str:
    more = f" and {len(concepts) - shown} more" if len(concepts) > shown else ""
    return ", ".join(concepts[:shown]) + more


def render(run_dir: str | Path, show_explicit: bool = False) -> str:
    """The HTML page of a run folder (explicit-family images only with ``show_explicit``)."""
    run_dir = Path(run_dir)
    results, rows = load_run(run_dir), load_rows(run_dir)
    env = results["environment"]
    variants = ", ".join(
        f"{html.escape(n)} ({html.escape(v['method'])}: {html.escape(_names(v['concepts']))})"
        if v["method"]
        else f"{html.escape(n)} (unedited)"
        for n, v in results["variants"].items()
    )
    config = json.dumps({"config": results["config"], "protocol": results["protocol"]}, indent=2, default=str)
    attacks = attack_tables(results)  # an `erasekit attack` run: ASR tables instead of accuracies
    sections = [
        f"<h1>erasekit evaluation: {html.escape(run_dir.resolve().name)}</h1>",
        f"<p>Model <code>{html.escape(results['model']['spec'])}</code> · variants: {variants} · "
        f"{results['prompts']['rows']} prompts · created {html.escape(env['created_utc'])} · "
        f"erasekit {html.escape(env['erasekit'])}</p>",
        "<p class=muted>Accuracies are top-1 agreement with each row's label; lower is better on erase/synonym/"
        "indirect rows, higher on retain rows. H_o, H_c, H_cc: the papers' harmonic means (see docs/evaluation.md)."
        "</p>",
        "<h2>Headline numbers</h2>",
        attacks or headline_tables(results),
        "" if attacks else "<h2>Accuracy against the number of erased concepts</h2>" + accuracy_plots(results),
        "<h2>Images</h2>",
        image_grids(results, rows, show_explicit),
        "<h2>All numbers</h2>",
        all_numbers(results),
        "<h2>Config and protocol</h2>",
        f"<pre>{html.escape(config)}</pre>",
    ]
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>erasekit report</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None, show_explicit: bool = False) -> Path:
    """Render the report of ``run_dir`` to ``output`` (default ``RUN_DIR/report.html``), atomically."""
    path = Path(output) if output else Path(run_dir) / REPORT_FILE
    page = render(run_dir, show_explicit)
    with atomic_file(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def image_grid(rows: Sequence[tuple[str, Sequence[Image.Image]]], columns: Sequence[str]) -> Image.Image:
    """Images in a grid with a label per row (left) and per column (top, wrapped to the column width).

    The grid is ``LABEL_WIDTH + n_columns * cell`` wide and ``HEADER_HEIGHT + n_rows * cell`` high, where ``cell``
    is the image size, upscaled by an integer factor to at least ``MIN_CELL``.
    """
    width, height = rows[0][1][0].size
    scale = -(-MIN_CELL // min(width, height))  # ceil, >= 1
    cell_w, cell_h = width * scale, height * scale
    font = ImageFont.load_default(size=FONT_SIZE)
    grid = Image.new("RGB", (LABEL_WIDTH + len(columns) * cell_w, HEADER_HEIGHT + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for j, text in enumerate(columns):
        for k, line in enumerate(_wrap(draw, text, font, cell_w - 2 * PAD)):
            draw.text((LABEL_WIDTH + j * cell_w + PAD, PAD + k * LINE_HEIGHT), line, fill="black", font=font)
    for i, (label, images) in enumerate(rows):
        top = HEADER_HEIGHT + i * cell_h
        draw.text((PAD, top + cell_h // 2), label, fill="black", font=font, anchor="lm")
        for j, image in enumerate(images):
            image = image.convert("RGB").resize((cell_w, cell_h), Image.Resampling.NEAREST)
            grid.paste(image, (LABEL_WIDTH + j * cell_w, top))
    return grid


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap into at most ``HEADER_LINES`` lines; what does not fit ends in "..."."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > HEADER_LINES:
        lines = [*lines[: HEADER_LINES - 1], " ".join(lines[HEADER_LINES - 1 :])]
    return [_fit(draw, line, font, width) for line in lines]


def _fit(draw: ImageDraw.ImageDraw, line: str, font, width: int) -> str:
    if draw.textlength(line, font=font) <= width:
        return line
    while line and draw.textlength(line + "...", font=font) > width:
        line = line[:-1]
    return line + "..."
