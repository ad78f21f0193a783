"""Where the time goes in one medlite run: training cost of distillation, inference speed of the
int8 student vs its fp32 ONNX file vs PyTorch eager, and the whole recipe's wall time.

    python benchmarks/pipeline_speed.py RUN_DIR

Reads RUN_DIR/results.json (per-variant `train.mean_epoch_s` and `bench`, top-level `timings`);
bench figures not merged into results.json are taken from RUN_DIR/bench.json. Exits 2 with one
line listing everything missing, because a half-empty comparison is easy to misread.
Standard library only, so it runs wherever the run directory is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KD, SCRATCH = "student_kd", "student_scratch"


class Missing(Exception):
    """Facts the comparison needs are absent from the run directory."""


def _load(run_dir: Path) -> tuple[dict, dict[str, dict]]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise Missing(f"{path}: not found (give a medlite run directory)")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise Missing(f"{path}: not valid JSON ({err})") from None
    variants = {v.get("name"): v for v in results.get("variants", []) if isinstance(v, dict)}
    bench_path = run_dir / "bench.json"
    if bench_path.is_file():
        stored = json.loads(bench_path.read_text()).get("variants", {})
        for name, figures in stored.items():
            if name in variants and "bench" not in variants[name]:
                variants[name]["bench"] = figures
    return results, variants


def _int8_student(variants: dict[str, dict]) -> dict | None:
    """The int8 static student quantized straight from the KD student (not a pruned one), if any."""
    found = [v for n, v in variants.items() if n and KD in n and "int8_static" in n]
    found.sort(key=lambda v: (v.get("parent") != KD, len(v["name"])))
    return found[0] if found else None


def _eager_reference(variants: dict[str, dict], start: dict) -> dict | None:
    """The PyTorch eager figures of the nearest base model up the lineage."""
    seen, node = set(), start
    while node and node.get("name") not in seen:
        seen.add(node.get("name"))
        ref = (node.get("bench") or {}).get("reference")
        if isinstance(ref, dict) and "latency_ms" in ref:
            return ref
        node = variants.get(node.get("parent"))
    return None


def collect(run_dir: Path) -> dict:
    """Every figure the report prints; raises Missing naming all that is absent."""
    results, variants = _load(run_dir)
    missing: list[str] = []
    facts: dict = {"run_dir": str(run_dir)}

    for key, name in (("kd", KD), ("scratch", SCRATCH)):
        train = (variants.get(name) or {}).get("train") or {}
        if train.get("mean_epoch_s") is None:
            missing.append(f"variants[{name}].train.mean_epoch_s")
        facts[key] = {"name": name, "mean_epoch_s": train.get("mean_epoch_s"),
                      "epochs": len(train.get("epoch_seconds") or []),
                      "teacher_cache_seconds": train.get("teacher_cache_seconds")}
    teacher = (variants.get("teacher") or {}).get("train") or {}
    facts["teacher_epoch_s"] = teacher.get("mean_epoch_s")

    int8 = _int8_student(variants)
    if int8 is None:
        missing.append(f"a variant named like {KD}*int8_static*")
    fp32 = variants.get(int8.get("parent")) if int8 else None
    if int8 is not None and "latency_ms" not in (int8.get("bench") or {}):
        missing.append(f"variants[{int8['name']}].bench (run with bench.enabled or `medlite bench`)")
    if int8 is not None and (fp32 is None or "latency_ms" not in (fp32.get("bench") or {})):
        missing.append(f"bench figures of {int8.get('parent')!r}, the fp32 parent of {int8['name']}")
    eager = _eager_reference(variants, fp32) if fp32 else None
    if int8 is not None and eager is None:
        missing.append(f"a PyTorch eager reference (bench.reference) for {int8.get('parent')!r} or its ancestors")
    facts["int8"], facts["fp32"], facts["eager"] = int8, fp32, eager

    timings = results.get("timings") or {}
    if not timings:
        missing.append("top-level timings")
    facts["timings"] = timings
    if missing:
        raise Missing(f"{run_dir / 'results.json'} lacks: " + "; ".join(missing))
    return facts


def _lat(obj: dict, key: str) -> float | None:
    entry = obj.get(key) if key != "primary" else obj
    return ((entry or {}).get("latency_ms") or {}).get("p50")


def render(facts: dict) -> str:
    """Plain text, aligned columns: pastes into an issue or a paper draft unchanged."""
    lines = [f"medlite pipeline speed: {facts['run_dir']}", ""]
    kd, scratch = facts["kd"]["mean_epoch_s"], facts["scratch"]["mean_epoch_s"]
    lines += ["training, mean epoch time", f"  {'KD student (' + KD + ')':<36}{kd:>10.2f} s",
              f"  {'scratch student (' + SCRATCH + ')':<36}{scratch:>10.2f} s",
              f"  {'KD / scratch':<36}{kd / scratch:>10.2f} x"]
    cache = facts["kd"].get("teacher_cache_seconds")
    if cache is not None:
        # The teacher runs once per fixed augmented view before training, not once per batch.
        lines.append(f"  {'teacher outputs cached (once)':<36}{cache:>10.2f} s")
    if facts["teacher_epoch_s"] is not None:
        lines.append(f"  {'teacher':<36}{facts['teacher_epoch_s']:>10.2f} s")

    int8, fp32, eager = facts["int8"]["bench"], facts["fp32"]["bench"], facts["eager"]
    keys = ["primary"] + [k for k in ("threads_all",) if k in int8 and k in fp32 and k in eager]
    header = "".join(f"{('1 thread' if k == 'primary' else 'all cores') + ' p50 ms':>20}" for k in keys)
    lines += ["", "inference, batch 1", f"  {'':<36}{header}"]
    rows = [(f"ORT int8  ({facts['int8']['name']})", int8), (f"ORT fp32  ({facts['fp32']['name']})", fp32),
            ("PyTorch eager fp32", eager)]
    for label, obj in rows:
        lines.append(f"  {label:<36}" + "".join(f"{_lat(obj, k) or float('nan'):>20.3f}" for k in keys))
    for label, base in (("int8 speed-up vs fp32 ORT", fp32), ("int8 speed-up vs eager", eager)):
        ratios = [(_lat(base, k) or 0) / (_lat(int8, k) or float("inf")) for k in keys]
        lines.append(f"  {label:<36}" + "".join(f"{r:>19.2f}x" for r in ratios))

    timings = facts["timings"]
    total = timings.get("total")
    lines += ["", "recipe wall time"]
    for stage, seconds in timings.items():
        if stage != "total" and isinstance(seconds, (int, float)):
            lines.append(f"  {stage:<36}{seconds:>10.1f} s")
    if total is None:
        total = sum(v for v in timings.values() if isinstance(v, (int, float)))
        lines.append(f"  {'total (sum of stages)':<36}{total:>10.1f} s")
    else:
        lines.append(f"  {'total':<36}{total:>10.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/pipeline_speed.py RUN_DIR", file=sys.stderr)
        return 2
    try:
        print(render(collect(Path(argv[0]))))
    except Missing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
