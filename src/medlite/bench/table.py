"""A rich table of bench objects: one row per variant and thread count, eager reference alongside."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


COLUMNS = ("variant", "threads", "p50 ms", "p90", "p99", "mean±std", "runs", "img/s", "load ms", "prep ms",
           "RSS MB", "CPU", "°C", "J/inf", "eager p50", "speed-up")


def _rows(bench: dict) -> list[str]:
    """Thread-count keys in the order they were measured (threads_1, threads_all, ...)."""
    return [k for k in bench if k.startswith("threads_") and isinstance(bench[k], dict)]


def runtime_label(entry: dict) -> str | None:
    """What ran a bench entry, as tables name it ("ONNX Runtime", "LiteRT interpreter"): the registered
    runtime of its `mode`, else of its file's suffix; None when neither is known (a failed entry)."""
    from medlite.runtime import ArtifactError
    from medlite.runtime.registry import get_runtime, resolve_runtime

    for lookup in (lambda: get_runtime(entry["mode"]), lambda: resolve_runtime(entry.get("file") or entry["model"])):
        try:
            return lookup().display
        except (ArtifactError, KeyError, TypeError):
            continue
    return None


def bench_title(bench: dict) -> str:
    """'Benchmark (batch 1, ONNX Runtime)', or with several runtimes each beside the files it ran."""
    by_runtime: dict[str, list[str]] = {}
    for variant, entry in bench.items():
        label = runtime_label(entry) if isinstance(entry, dict) else None
        if label:
            suffix = Path(str(entry.get("file") or entry.get("model") or variant)).suffix
            by_runtime.setdefault(label, [])
            if suffix and suffix not in by_runtime[label]:
                by_runtime[label].append(suffix)
    if not by_runtime:
        return "Benchmark (batch 1)"
    if len(by_runtime) == 1:
        return f"Benchmark (batch 1, {next(iter(by_runtime))})"
    return "Benchmark (batch 1; " + "; ".join(f"{', '.join(s)}: {label}" for label, s in by_runtime.items()) + ")"


def print_bench_table(bench: dict, console: Console | None = None, title: str | None = None) -> None:
    """Print `{variant: bench}` (from `bench_run_dir`) or one bench object (from `bench_file`).

    Footnotes give the reasons for missing temperature/energy figures and where prep times come
    from, because a blank cell without a reason reads as "zero" or "broken". The title names the
    runtime(s) that ran the files. On a console too narrow for the table with whole variant names
    (a pipe at 80 columns), each variant's name goes on a line of its own above its rows.
    """
    console = console or Console()
    if "latency_ms" in bench or "error" in bench and "variant" not in bench:
        bench = {str(bench.get("file", "model")): bench}
    title = title or bench_title(bench)
    rows: list[dict[str, str]] = []
    notes: dict[str, None] = {}
    loads: list[tuple[float | None, int | None]] = []
    for variant, entry in bench.items():
        if "error" in entry or "skipped" in entry:
            failed = "error" in entry
            rows.append({"variant": variant, "threads": "[red]error[/red]" if failed else "[dim]skipped[/dim]"})
            notes[f"{variant}: {entry.get('error') or entry.get('skipped')}"] = None
            continue
        reference = entry.get("reference") or {}
        if "error" in reference:
            notes[f"{variant}: eager reference failed: {reference['error']}"] = None
        for i, key in enumerate(_rows(entry)):
            m, ref = entry[key], reference.get(key) if isinstance(reference.get(key), dict) else {}
            lat = m["latency_ms"]
            rows.append({
                "variant": variant if i == 0 else "",
                "threads": f"{m['threads']}" + ("*" if key == "threads_all" else ""),
                "p50 ms": _num(lat["p50"], "{:.3f}"), "p90": _num(lat["p90"], "{:.3f}"),
                "p99": _num(lat["p99"], "{:.3f}"), "mean±std": f"{lat['mean']:.3f}±{lat['std']:.3f}",
                "runs": str(lat["runs"]), "img/s": _num(m.get("throughput_ips"), "{:.0f}"),
                "load ms": _num(m.get("load_ms"), "{:.1f}"), "prep ms": _num(m.get("prep_ms"), "{:.3f}"),
                "RSS MB": _num(m.get("peak_rss_mb"), "{:.0f}"), "CPU": _num(m.get("cpu_util"), "{:.2f}"),
                "°C": _num(m.get("temperature_c"), "{:.0f}"), "J/inf": _num(m.get("energy_j_per_inference"), "{:.4f}"),
                "eager p50": _num((ref.get("latency_ms") or {}).get("p50"), "{:.3f}"),
                "speed-up": _num(((reference.get("speedup") or {}).get(key) or {}).get("latency_p50"), "{:.2f}x"),
            })
            for reason_key in ("temperature_unavailable", "energy_unavailable", "prep_source"):
                if m.get(reason_key):
                    label = reason_key.replace("_unavailable", " unavailable").replace("_", " ")
                    notes[f"{label}: {m[reason_key]}"] = None
            loads.append((m.get("system_load_1m"), (entry.get("machine") or {}).get("cores")))
            if key == "threads_all":
                notes["threads * = all cores (0)"] = None
    busy = [(load, cores) for load, cores in loads if load is not None and cores and load > cores]
    if busy:
        load, cores = max(busy)
        notes[f"machine busy while measuring (1-min load up to {load:.1f} on {cores} cores): timings are noisy"] = None
    columns = list(COLUMNS)
    # Columns that are empty everywhere (no sensors, no reference) only cost width: their reason is a footnote.
    columns = [c for c in columns if c in ("variant", "threads") or any(r.get(c, "-") != "-" for r in rows)]
    if console.width < 150:
        columns = [c for c in columns if c not in ("p90", "mean±std", "runs")]
    if console.width < 110:
        columns = [c for c in columns if c not in ("load ms", "prep ms")]
        notes["load and prep times hidden on this narrow terminal: see the JSON"] = None
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    longest = max((len(r["variant"]) for r in rows), default=len("variant"))
    for name in columns:
        if name == "variant":  # never squeezed: a name cut to two characters says nothing
            table.add_column(name, no_wrap=True, min_width=max(longest, len(name)))
        else:
            table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for row in rows:
        table.add_row(*[row.get(c, "") for c in columns])
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum  # unsqueezed width
    if natural <= console.width:
        console.print(table)
    else:
        print_stacked(rows, [c for c in columns if c != "variant"], title, console)
    machine = next((e.get("machine") for e in bench.values() if isinstance(e.get("machine"), dict)), None)
    if machine:
        notes[f"machine: {machine.get('platform')} ({machine.get('cores')} cores)"] = None
    notes["CPU = process CPU time / wall time in the latency loop (1.00 = one core busy)"] = None
    for note in notes:
        console.print(f"[dim]• {note}[/dim]", highlight=False)


def print_stacked(rows: list[dict[str, str]], columns: list[str], title: str, console: Console) -> None:
    """The narrow layout: the figures' columns as in the table, each variant's name on its own line
    above its rows (whole, however long), so the numbers keep their columns at 80 characters."""
    from rich.text import Text

    plain = lambda cell: Text.from_markup(cell).plain  # noqa: E731 - a cell's width without its markup
    widths = {c: max([len(c)] + [len(plain(r.get(c, ""))) for r in rows]) for c in columns}
    console.print(Text(title, style="italic"))
    console.print("  " + "  ".join(c.rjust(widths[c]) for c in columns), style="bold", highlight=False)
    console.print("  " + "  ".join("-" * widths[c] for c in columns), style="dim", highlight=False)
    for row in rows:
        if row["variant"]:
            console.print(Text(row["variant"], style="bold"))
        cells = [" " * (widths[c] - len(plain(row.get(c, "")))) + row.get(c, "") for c in columns]
        console.print(("  " + "  ".join(cells)).rstrip(), highlight=False, soft_wrap=True)
