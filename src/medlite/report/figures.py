"""The report's figures (matplotlib, Agg backend): saved as PNG and SVG under `figures/`, and
returned as PNG data URIs so `report.html` is one self-contained file that works offline."""

from __future__ import annotations

from medlite.runstate import temp_path

import base64
import io
from pathlib import Path

import numpy as np

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "svg.fonttype": "none", "figure.dpi": DPI})
    return plt


def save(fig, folder: Path, stem: str) -> dict:
    """Write `<stem>.png` and `<stem>.svg` atomically; return {"png", "svg", "uri", "width"}."""
    import os

    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    png = buffer.getvalue()
    for suffix, data in ((".png", png), (".svg", None)):
        path = folder / f"{stem}{suffix}"
        tmp = temp_path(path)
        if data is None:
            fig.savefig(tmp, format="svg", bbox_inches="tight")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    width = int(fig.get_size_inches()[0] * DPI)
    plt.close(fig)
    return {
        "png": f"{folder.name}/{stem}.png", "svg": f"{folder.name}/{stem}.svg",
        "uri": "data:image/png;base64," + base64.b64encode(png).decode(), "width": width,
    }


def safe_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _gray(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> something imshow draws faithfully (grey images as 2-D)."""
    return image[:, :, 0] if image.shape[2] == 1 else image


def dataset_examples(images_by_class: dict[str, np.ndarray], folder: Path) -> dict:
    plt = _plt()
    per_class = max(len(v) for v in images_by_class.values())
    rows = len(images_by_class)
    fig, axes = plt.subplots(rows, per_class, figsize=(per_class * 0.95, rows * 1.05), squeeze=False)
    for r, (name, images) in enumerate(images_by_class.items()):
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(images):
                ax.imshow(_gray(images[c]), cmap="gray", vmin=0, vmax=255)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle("Test images per class", y=1.0)
    return save(fig, folder, "dataset_examples")


MANY_CLASSES = 4  # above this, a variant's panels get a full-width card and room per class


def variant_panels(name: str, probs: np.ndarray, labels: np.ndarray, classes: list[str], cm: np.ndarray,
                   folder: Path, op: dict | None = None, bins: int = 10) -> dict:
    """Confusion matrix, ROC curve(s) and reliability diagram of one variant's deployed file.

    With more than MANY_CLASSES classes (HAM10000: 7) the figure is drawn wider and taller, for a
    full-width card (`wide`), so cell counts stay about 12 px on the page and the one-vs-rest legend sits
    beside the curves instead of over them."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    k = len(classes)
    many = k > MANY_CLASSES
    if many:  # a column of its own for the ROC legend: beside the curves, and tight_layout keeps gaps even
        fig, (a1, a2, legend_ax, a3) = plt.subplots(1, 4, figsize=(12.5, 4.6), layout="constrained",
                                                   gridspec_kw={"width_ratios": [1.25, 1.0, 0.38, 0.9]})
    else:
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(8.4, 2.8))
    # confusion matrix (rows: true, columns: predicted), counts and row share
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    shade = a1.imshow(share, cmap="Blues", vmin=0, vmax=1)
    # Both lines fit a cell up to 8 classes at this size; beyond, the count alone (the shade is the share).
    both = k <= 8
    cell_font = 8 if many else 7
    for i in range(k):
        for j in range(k):
            text = f"{cm[i, j]}\n{share[i, j]:.0%}" if both else f"{cm[i, j]}"
            a1.text(j, i, text, ha="center", va="center", fontsize=cell_font, linespacing=1.1,
                    color="white" if share[i, j] > 0.6 else "black")
    short = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    a1.set_xticks(range(k), short, rotation=30 if k > 2 else 0, ha="right" if k > 2 else "center")
    a1.set_yticks(range(k), short)
    a1.set_xlabel("predicted (argmax)"), a1.set_ylabel("true")
    a1.set_title("Confusion matrix (shade: share of the row)")
    if many:
        from matplotlib.ticker import PercentFormatter

        fig.colorbar(shade, ax=a1, fraction=0.046, pad=0.03, format=PercentFormatter(xmax=1))
    # ROC: the positive class of a binary task (the operating point's class if set), else one-vs-rest
    show = [op["positive_index"]] if op else ([1] if k == 2 else list(range(k)))
    for c in show:
        truth = labels == c
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, probs[:, c])
        a2.plot(fpr, tpr, lw=1.4, label=f"{short[c]} (AUC {roc_auc_score(truth, probs[:, c]):.3f})")
    if op:
        spec, sens = op["test"]["specificity"], op["test"]["sensitivity"]
        a2.plot([1 - spec], [sens], "o", color="crimson", label=f"threshold {op['threshold']:.2f}")
        a2.plot([1 - op["argmax"]["specificity"]], [op["argmax"]["sensitivity"]], "s", color="gray", label="argmax")
    a2.plot([0, 1], [0, 1], ":", color="gray", lw=0.8)
    a2.set_xlabel("1 - specificity"), a2.set_ylabel("sensitivity")
    a2.set_xlim(0, 1), a2.set_ylim(0, 1.02)
    if many:  # one curve per class: the legend beside the axes, never over the curves
        a2.set_title("ROC, one class vs the rest")
        legend_ax.axis("off")
        legend_ax.legend(*a2.get_legend_handles_labels(), fontsize=7, loc="upper left", frameon=False,
                         handlelength=1.2, borderaxespad=0)
    else:
        a2.set_title("ROC"), a2.legend(fontsize=6, loc="lower right")
    # reliability: accuracy per confidence bin, bar width = bin, count annotated
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    centers, accs, counts = [], [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            centers.append((edges[b] + edges[b + 1]) / 2)
            accs.append(correct[mask].mean())
            counts.append(int(mask.sum()))
    a3.bar(centers, accs, width=1 / bins, edgecolor="black", lw=0.5, color="#7aa6d6")
    a3.plot([0, 1], [0, 1], ":", color="gray", lw=0.8)  # perfect calibration
    for x, y, n in zip(centers, accs, counts):
        a3.text(x, min(y + 0.02, 0.97), str(n), ha="center", fontsize=7 if many else 6)
    lo = 1 / k
    a3.set_xlim(max(0, lo - 0.05), 1), a3.set_ylim(0, 1.02)
    a3.set_xlabel("confidence (max probability)"), a3.set_ylabel("accuracy")
    a3.set_title("Reliability (bars: accuracy, n per bin)")
    if not many:  # the wide figure lays itself out (constrained)
        fig.tight_layout()
    return {**save(fig, folder, f"variant_{safe_stem(name)}"), "wide": many}


def multilabel_panels(name: str, probs: np.ndarray, labels: np.ndarray, classes: list[str], folder: Path,
                      per_label: dict | None = None) -> dict:
    """Per-label ROC curves of one multi-label variant's deployed file (one panel per label, AUC in the
    title; the dot: the label's threshold chosen on validation). A label without positives or negatives
    in the split has no curve and says so."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    k = len(classes)
    cols = min(k, 5)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.75, rows * 1.8), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols, i % cols]
        if i >= k:
            ax.axis("off")
            continue
        truth = np.asarray(labels)[:, i] == 1
        title = classes[i] if len(classes[i]) <= 16 else classes[i][:15] + "…"
        ax.plot([0, 1], [0, 1], ":", color="gray", lw=0.7)
        if truth.all() or not truth.any():
            ax.set_title(f"{title}\n(undefined: no {'negatives' if truth.all() else 'positives'})", fontsize=7)
        else:
            fpr, tpr, _ = roc_curve(truth, probs[:, i])
            ax.plot(fpr, tpr, lw=1.2)
            ax.set_title(f"{title}\nAUC {roc_auc_score(truth, probs[:, i]):.3f} (n+ {int(truth.sum())})", fontsize=7)
            row = (per_label or {}).get(classes[i]) or {}
            sens, spec = row.get("sensitivity"), row.get("specificity")
            if sens is not None and spec is not None and sens == sens and spec == spec:
                ax.plot([1 - spec], [sens], "o", color="crimson", ms=3)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
        if i % cols == 0:
            ax.set_ylabel("sensitivity", fontsize=7)
        if i // cols == rows - 1:
            ax.set_xlabel("1 - specificity", fontsize=7)
    fig.suptitle(f"{name}: ROC per label (dot: the label's threshold chosen on val)", fontsize=8)
    fig.tight_layout()
    return save(fig, folder, f"variant_{safe_stem(name)}")


def label_cooccurrence(labels: np.ndarray, classes: list[str], folder: Path) -> dict:
    """How often two findings occur on the same image: counts (diagonal: images with the finding), shaded
    by P(column | row), so a rare label's partners show as clearly as a common one's."""
    plt = _plt()
    y = np.asarray(labels).astype(np.int64)
    counts = y.T @ y
    diag = np.maximum(np.diag(counts), 1)
    share = counts / diag[:, None]
    k = len(classes)
    fig, ax = plt.subplots(figsize=(0.42 * k + 1.8, 0.42 * k + 1.2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] > 0.6 else "black")
    short = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    ax.set_xticks(range(k), short, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), short, fontsize=7)
    ax.set_title(f"Label co-occurrence ({len(y)} images; shade: P(column | row))")
    fig.tight_layout()
    return save(fig, folder, "label_cooccurrence")


def training_curves(histories: dict[str, list[dict]], folder: Path) -> dict | None:
    series = {n: h for n, h in histories.items() if h}
    if not series:
        return None
    plt = _plt()
    keys = [("train_loss", "training loss"), ("val_auc", "validation AUC")]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.2))
    for name, history in series.items():
        for ax, (key, _) in zip(axes, keys):
            xs = [row["epoch"] + 1 for row in history if key in row]
            ys = [row[key] for row in history if key in row]
            if xs:
                ax.plot(xs, ys, lw=1.1, marker="." if len(xs) < 20 else None, label=name)
    for ax, (_, title) in zip(axes, keys):
        ax.set_title(title), ax.set_xlabel("epoch"), ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return save(fig, folder, "training_curves")


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the 2-D front of (AUC up, cost down): no other variant is at least as accurate and at
    most as costly, and better in one. Sorted by cost. A point without a finite AUC or a positive
    finite cost is on no front (and dominates nothing). Of exact duplicates (same AUC and cost)
    the first is kept, so the drawn front never runs through the same place twice."""
    finite = [(n, a, c) for n, a, c in points if np.isfinite(a) and np.isfinite(c) and c > 0]
    front = []
    for i, (name, auc, cost) in enumerate(finite):
        beaten = any(a >= auc and c <= cost and (a > auc or c < cost) for o, a, c in finite if o != name)
        earlier_twin = any(a == auc and c == cost for _, a, c in finite[:i])
        if not beaten and not earlier_twin:
            front.append((cost, name))
    return [name for _, name in sorted(front)]


def front_line(points: list[tuple[str, float, float]]) -> tuple[list[float], list[float]]:
    """The drawn front: (costs, AUCs) of the front's points only, by cost, joined by straight segments
    (each vertex a variant that exists; no corner of a staircase that no variant sits at)."""
    by_name = {n: (a, c) for n, a, c in points}
    names = pareto_front(points)
    return [by_name[n][1] for n in names], [by_name[n][0] for n in names]


# Label offsets tried in turn (points, with the text's alignment): right, left, above, below, the
# diagonals; then the same further out (with a leader line). The nearest clear the marker and its ring.
_DIRECTIONS = ((7, 0, "left", "center"), (-7, 0, "right", "center"), (0, 6, "center", "bottom"),
               (0, -6, "center", "top"), (6, 5, "left", "bottom"), (-6, 5, "right", "bottom"),
               (6, -5, "left", "top"), (-6, -5, "right", "top"))
_OFFSETS = [(f * dx, f * dy, ha, va) for f in (1, 2.5, 4) for dx, dy, ha, va in _DIRECTIONS]


def place_labels(ax, labels: list[tuple[str, float, float, dict]]) -> list:
    """Annotate (text, x, y, text style) so no two labels overlap each other or a marker: each label
    takes the first of `_OFFSETS` where its box is free (and inside the axes), measured with the
    figure's renderer; a label pushed away from its point gets a thin leader line. No free spot at all:
    the last offset tried. Returns the annotations."""
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for _, x, y, _ in labels:  # every marker (with its front ring), about 14 px across
        px, py = ax.transData.transform((x, y))
        taken.append((px - 7, py - 7, px + 7, py + 7))
    leader = {"arrowstyle": "-", "lw": 0.5, "color": "#888888", "shrinkA": 0, "shrinkB": 5}
    placed = []
    for text, x, y, style in labels:
        for n, (dx, dy, ha, va) in enumerate(_OFFSETS):
            far = n >= len(_DIRECTIONS)
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              arrowprops=leader if far else None, **style)
            ann.update_positions(renderer)
            box = Text.get_window_extent(ann, renderer)  # the text alone, not its leader line
            rect = (box.x0 - 1, box.y0 - 1, box.x1 + 1, box.y1 + 1)
            inside = box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1
            free = not any(r[0] < rect[2] and rect[0] < r[2] and r[1] < rect[3] and rect[1] < r[3] for r in taken)
            if (inside and free) or n == len(_OFFSETS) - 1:
                break
            ann.remove()
        taken.append(rect)
        placed.append(ann)
    return placed


def pareto(points: list[tuple[str, float, float, float | None]], folder: Path) -> dict | None:
    """AUC against file size (colour: latency) and against latency, each panel with its Pareto front."""
    points = [p for p in points if p[1] == p[1] and p[2]]
    if not points:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    lat = np.array([p[3] if p[3] is not None else np.nan for p in points], float)
    has_lat = np.isfinite(lat).any()
    panels = [(a1, [(n, a, s / 1024) for n, a, s, _ in points], "file size (KB, log)")]
    if has_lat:
        panels.append((a2, [(n, a, l) for n, a, _, l in points if l is not None and np.isfinite(l)],
                       "latency p50, one image (ms, log)"))
    else:
        a2.axis("off")
        a2.text(0.5, 0.5, "no benchmark in this run\n(bench.enabled: false)", ha="center", va="center")
    for ax, pts, xlabel in panels:
        front = pareto_front(pts)
        colour = {"c": lat, "cmap": "viridis"} if (ax is a1 and has_lat) else {"color": "#7f9cc0"}
        sc = ax.scatter([c for _, _, c in pts], [a for _, a, _ in pts], s=30, edgecolors="black", linewidths=0.4,
                        zorder=3, **colour)
        if ax is a1 and has_lat:
            fig.colorbar(sc, ax=a1, label="latency p50 (ms)")
        xs, ys = front_line(pts)
        ax.plot(xs, ys, "-", color="crimson", lw=1.2, zorder=2, label="Pareto front")
        ax.scatter(xs, ys, s=90, facecolors="none", edgecolors="crimson", linewidths=1.0, zorder=4)
        ax.set_xscale("log"), ax.set_xlabel(xlabel), ax.set_ylabel("test AUC"), ax.grid(alpha=0.3, which="both")
        # Room around the points for their labels, then the labels (placed once the axes are final).
        ax.margins(x=0.25, y=0.15)
    a1.set_title("AUC vs file size")
    if has_lat:
        a2.set_title("AUC vs latency")
    fig.tight_layout()
    for ax, pts, _ in panels:
        front = set(pareto_front(pts))
        place_labels(ax, [(n, c, a, {"fontsize": 7 if n in front else 6.5, "color": "crimson" if n in front else "#444444",
                                      "fontweight": "bold" if n in front else "normal"}) for n, a, c in pts])
    return save(fig, folder, "pareto")


def overlay(saliency: np.ndarray) -> np.ndarray:
    """RGBA heat overlay: colour and opacity grow with the (min-max scaled) saliency, so the image
    stays visible where the map says nothing."""
    import matplotlib

    norm = (saliency - saliency.min()) / np.ptp(saliency)
    rgba = matplotlib.colormaps["jet"](norm)
    rgba[..., 3] = 0.75 * norm ** 0.8
    return rgba


def wrap_name(name: str, width: int = 12) -> str:
    """'student_kd_pruned_int8_static' -> 'student_kd\npruned_int8\nstatic' (column titles that do not collide)."""
    lines, current = [], ""
    for part in name.split("_"):
        candidate = f"{current}_{part}" if current else part
        if current and len(candidate) > width:
            lines.append(current)
            current = part
        else:
            current = candidate
    return "\n".join(lines + [current])


def explanation_gallery(method: str, images: np.ndarray, true_names: list[str], columns: list[tuple[str, np.ndarray, np.ndarray]],
                        classes: list[str], targets: np.ndarray, folder: Path, stem: str | None = None,
                        title: str | None = None) -> dict:
    """Rows: images; columns: the image, then each variant's map over it.

    `columns`: (variant, maps (N, H, W), probabilities (N, K)). Each tile's caption is the
    variant's prediction, green when right, red when wrong.
    """
    plt = _plt()
    n, m = len(images), len(columns)
    tile = min(1.3, max(1.1, 7.0 / (m + 1)))  # inches: small galleries are not shown as thumbnails
    fig, axes = plt.subplots(n, m + 1, figsize=((m + 1) * tile, n * tile * 1.15), squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(_gray(images[i]), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(true_names[i][:14], rotation=0, ha="right", va="center", fontsize=7)
        if i == 0:
            ax.set_title("image", fontsize=7)
        for j, (name, maps, probs) in enumerate(columns):
            ax = axes[i, j + 1]
            ax.set_xticks([]), ax.set_yticks([])
            ax.imshow(_gray(images[i]), cmap="gray", vmin=0, vmax=255)
            saliency = maps[i]
            span = np.ptp(saliency)
            if span > 0:
                ax.imshow(overlay(saliency), interpolation="bilinear")
            predicted = int(np.argmax(probs[i]))
            right = predicted == targets[i]
            flat = "" if span > 0 else "\n(flat map)"
            name_ = classes[predicted] if len(classes[predicted]) <= 9 else classes[predicted][:8] + "\u2026"
            ax.set_xlabel(f"{name_} {probs[i][predicted]:.2f}{flat}", fontsize=7,
                          color="darkgreen" if right else "crimson", labelpad=1)
            for spine in ax.spines.values():
                spine.set_edgecolor("darkgreen" if right else "crimson")
                spine.set_linewidth(1.2)
            if i == 0:
                ax.set_title(wrap_name(name), fontsize=7)
    fig.suptitle(title or f"{method}: where each variant looks for the true class (caption: its prediction)", y=1.0, fontsize=8)
    fig.tight_layout(pad=0.3)
    heat_scale(fig, axes[-1, 1:].tolist())
    return save(fig, folder, stem or f"explain_{safe_stem(method)}")


def heat_scale(fig, under: list) -> None:
    """The colour scale of the heat overlays, below the axes `under` (a gallery's last row of maps):
    every map is min-max scaled on its own, so the scale reads from its lowest to its highest value,
    with the overlay's opacity growing along it as in `overlay`. Saved with bbox_inches='tight', a bar
    below the figure's box is kept."""
    import matplotlib
    from matplotlib.colors import Normalize

    boxes = [ax.get_position() for ax in under]
    x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    height = fig.get_size_inches()[1]
    width = min(x1 - x0, 0.6)
    # Below the last row's captions (two caption lines, about 0.35 in).
    cax = fig.add_axes([x0 + (x1 - x0 - width) / 2, min(b.y0 for b in boxes) - 0.5 / height, width, 0.09 / height])
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(Normalize(0, 1), matplotlib.colormaps["jet"]), cax=cax,
                       orientation="horizontal")
    bar.set_ticks([0, 0.5, 1], labels=["lowest", "", "highest"])
    bar.ax.tick_params(labelsize=6, length=2, pad=1)
    bar.set_label("saliency of each map (scaled to its own min-max; more opaque where higher)", fontsize=6, labelpad=2)
