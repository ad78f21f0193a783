"""The results table: printed (rich) and as a self-contained HTML report."""

from __future__ import annotations

from importlib import resources

COLUMNS = ("variant", "parent", "format", "params", "MACs", "file", "gzip", "sparsity", "acc", "bal.acc", "AUC", "AUC 95% CI", "F1", "ECE", "p50 ms")
# Multi-label runs: balanced accuracy, F1 and ECE of one class per image do not exist; the metric
# columns are MedMNIST's (mean AUC, mean accuracy at 0.5) and average precision, macro and micro.
MULTILABEL_COLUMNS = ("variant", "parent", "format", "params", "MACs", "file", "gzip", "sparsity", "mean acc", "AP macro",
                      "mean AUC", "AUC 95% CI", "AP micro", "labels", "p50 ms")
_METRIC_KEYS = {False: ("accuracy", "balanced_accuracy", "f1_macro", "ece"),
                True: ("accuracy", "ap_macro", "ap_micro", "labels_defined")}


def _multilabel(results: dict) -> bool:
    return (results.get("dataset") or {}).get("task") == "multilabel"


def columns(results: dict) -> tuple[str, ...]:
    """The results table's header for this run's task."""
    return MULTILABEL_COLUMNS if _multilabel(results) else COLUMNS


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def _num(x, digits: int = 3) -> str:
    # Not a number (None, NaN, a key the metric set lacks: multi-label data has no ECE): "-".
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and x == x else "-"


def table_rows(results: dict) -> list[list[str]]:
    """One row per variant, in the order of `columns(results)`."""
    acc, second, third, fourth = _METRIC_KEYS[_multilabel(results)]
    rows = []
    for v in results["variants"]:
        m = v.get("metrics") or {}
        ci = (m.get("ci") or {}).get("auc")
        latency = (v.get("bench") or {}).get("latency_ms") or {}
        count = m.get(fourth)
        rows.append([
            v["name"] + (" (!)" if v.get("warnings") else ""), v.get("parent") or "-", v.get("format") or "-", _fmt_count(v.get("params")),
            _fmt_count(v.get("macs")), _fmt_bytes(v.get("file_bytes")), _fmt_bytes(v.get("gzip_bytes")),
            _num(v.get("sparsity"), 2), _num(m.get(acc)), _num(m.get(second)), _num(m.get("auc")),
            f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-", _num(m.get(third)),
            str(count) if fourth == "labels_defined" and isinstance(count, int) else _num(count),
            _num(latency.get("p50"), 3),
        ])
    return rows


def print_table(results: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"{results['recipe']}: {results['dataset']['name']} (test split, measured on the exported files)")
    for column in columns(results):
        table.add_column(column, justify="left" if column in ("variant", "parent", "format") else "right")
    for row in table_rows(results):
        table.add_row(*row)
    console.print(table)
    for skipped in results.get("skipped") or []:
        console.print(f"not made: {skipped['name']} ({skipped['reason']})")
    for line in warning_lines(results):
        console.print(f"(!) {line}", markup=False)


def warning_lines(results: dict) -> list[str]:
    """One line per warning of the data (a split that lets groups cross) and of every variant (what is
    not what its name says)."""
    data = [f"data: {w}" for w in (results.get("dataset") or {}).get("warnings") or []]
    return data + [f"{v['name']}: {w}" for v in results["variants"] for w in v.get("warnings") or []]


def render_html(results: dict, **extra) -> str:
    """The report page; `extra` carries the figures and tables `write_report` prepares (all optional)."""
    from jinja2 import Environment, select_autoescape

    template = (resources.files("medlite") / "report" / "templates" / "report.html.j2").read_text()
    env = Environment(autoescape=select_autoescape(default=True))
    env.filters["num"] = _num
    env.filters["bytes"] = _fmt_bytes
    context = {"dataset_figure": None, "variant_figures": {}, "training_figure": None, "pareto_figure": None,
               "galleries": [], "faithfulness": [], "agreement": [], "operating_points": [], "files": [],
               "warnings": {}, "deploy": None, "per_label": [], "cooccurrence_figure": None,
               "layers_html": None}
    context.update(extra)
    return env.from_string(template).render(results=results, columns=columns(results), rows=table_rows(results), **context)


def write_report(root, results: dict, dataset=None) -> None:
    """report.html plus the files beside it (predictions are written by the predict stage):
    figures/*.png|svg, confusion/<variant>.csv, classification_report.csv."""
    from pathlib import Path

    from medlite.report.build import build_report

    build_report(Path(root), results, dataset)
