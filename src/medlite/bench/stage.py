"""The bench stage: every variant's deployed file timed in its runtime, each in a fresh process;
with `bench.layers` (on by default) also its per-layer view (`layers/<variant>.json`, `medlite.bench.layers`)."""

from __future__ import annotations

from medlite.context import Context
from medlite.stage import Output, Stage


def bench_stage(ctx: Context) -> Stage[None]:
    from medlite.bench.runner import machine_info

    cfg = ctx.recipe.bench
    # Timings belong to the machine that measured them: a run directory copied elsewhere re-benches.
    machine = {k: v for k, v in machine_info().items() if k in ("cpu", "cores", "platform")}
    variants = list(ctx.variants.values())

    def compute() -> dict:
        from medlite.bench import bench_run_dir

        ctx.say(f"bench: timing {len(variants)} variants, each in a fresh process")
        benches = bench_run_dir(ctx.run.root, cfg)
        files = []
        if cfg.layers:
            from medlite.bench.layers import write_views

            ctx.say("bench: per-layer views (ONNX Runtime's profiler; LiteRT without one)")
            files = write_views(ctx.run.root, variants, benches, say=ctx.say)
        return Output({"bench": benches, "machine": machine}, files)

    def emit(facts: dict) -> None:
        for name, bench in facts["bench"].items():
            if name in ctx.variants:
                ctx.variants[name].bench = bench

    return Stage(name="bench", kind="bench", inputs=variants, config=[cfg.model_dump(), machine],
                 compute=compute, emit=emit, plan=lambda: None)
