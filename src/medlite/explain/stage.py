"""The `explain` stage: maps for the same test images from every variant, their faithfulness, and
how much the variants agree with the models they came from.

Per variant (cached as `<variant>.explain`, output `explain/<variant>.npz`):
- each configured method that applies (gradient methods need a PyTorch module: the teacher and
  the students; black-box methods run every deployed file, int8 and pruned ones included);
- deletion / insertion AUC of every map, measured with the variant's deployed file, and of a
  random ranking for reference.
Then, across variants (cheap, recomputed from the stored maps): Spearman and top-region IoU
against every variant in its lineage (its parent chain and the teachers along it) that was
explained with the same method. Everything goes into `variant.explain` in results.json.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medlite.context import Context
from medlite.errors import UsageError
from medlite.runstate import temp_path
from medlite.stage import PlannedStage, Stage
from medlite.variant import Variant, lineage

EXPLAIN_SCHEMA = 2  # bump when maps, scores or the files they are written to change


def select_images(labels: np.ndarray, wrong_votes: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices into the split: `per_class` images of each class, seeded, including mistakes.

    About a third of each class's picks (at least one when picking two or more) are images that
    most explained variants get wrong, so the gallery shows failures as well as successes.
    """
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        wrong = [i for i in members if wrong_votes[i]]
        right = [i for i in members if not wrong_votes[i]]
        n_wrong = min(len(wrong), max(1, per_class // 3)) if per_class >= 2 else 0
        picks = wrong[:n_wrong] + right[: per_class - n_wrong]
        picks += [i for i in wrong[n_wrong:]][: per_class - len(picks)]  # a class the models mostly miss
        chosen += sorted(int(i) for i in picks)
    return np.array(chosen, dtype=int)


def deployed_predictor(path: Path, runtime: str):
    """normalised NCHW float32 -> probabilities, from the deployed file in its own runtime (one session)."""
    from medlite.runtime import open_artifact

    artifact = open_artifact(path, runtime=runtime)
    return lambda x: artifact.probabilities(np.ascontiguousarray(x, np.float32))


def explain_variant(ctx, variant, images: np.ndarray, targets: np.ndarray, cfg) -> tuple[dict, dict[str, np.ndarray]]:
    """(facts, maps by method) for one variant on normalised `images` with class `targets`."""
    from medlite.explain import get_explainer
    from medlite.explain.methods import Subject
    from medlite.explain.scores import deletion_insertion, random_maps

    predict = deployed_predictor(ctx.run.root / variant.file, variant.runtime)
    module = ctx.models.load(variant) if variant.checkpoint else None
    subject = Subject(variant.name, predict, module=module, format=variant.format)
    facts: dict = {"methods": {}}
    maps: dict[str, np.ndarray] = {}
    for method in cfg.methods:
        explainer = get_explainer(method, cfg, seed=ctx.recipe.seed)
        reason = explainer.not_applicable(subject)
        if reason:
            facts["methods"][method] = {"kind": explainer.kind, "skipped": reason}
            continue
        start = time.perf_counter()
        try:
            out = explainer.explain(subject, images, targets)
        except ValueError as err:  # the method's own "cannot explain this model" (e.g. no 2-D feature stage)
            facts["methods"][method] = {"kind": explainer.kind, "skipped": f"failed: {err}"}
            ctx.say(f"{variant.name}: {method} could not explain this model: {err}")
            continue
        seconds = time.perf_counter() - start
        deletion, insertion = deletion_insertion(predict, images, out, targets, cfg.steps)
        maps[method] = out
        facts["methods"][method] = {
            "kind": explainer.kind, "runs_on": "pytorch" if explainer.kind == "gradient" else variant.runtime,
            **explainer.info, "seconds": round(seconds, 3),
            "deletion_auc": round(float(deletion.mean()), 4), "insertion_auc": round(float(insertion.mean()), 4),
            "per_image": {"deletion_auc": [round(float(x), 4) for x in deletion],
                          "insertion_auc": [round(float(x), 4) for x in insertion]},
        }
    noise = random_maps((len(images),) + images.shape[-2:], ctx.recipe.seed)
    deletion, insertion = deletion_insertion(predict, images, noise, targets, cfg.steps)
    facts["random"] = {"deletion_auc": round(float(deletion.mean()), 4), "insertion_auc": round(float(insertion.mean()), 4)}
    facts["probabilities"] = np.round(predict(images), 5).tolist()
    return facts, maps


def explain_pixels(ctx, variant, pixels: np.ndarray, targets: np.ndarray, cfg) -> tuple[dict, dict[str, np.ndarray]]:
    """`explain_variant` on uint8 `pixels` (N, H, W, C), prepared at the variant's own input size; maps
    of a variant at another size (a cross-resolution student) are resized to the pixels' grid."""
    from medlite.data.preprocess import normalize, resize_batch

    spec = ctx.data_for(variant).preprocess
    facts, maps = explain_variant(ctx, variant, normalize(resize_batch(pixels, spec.image_size), spec), targets, cfg)
    if spec.image_size != pixels.shape[1]:
        maps = {method: _resize_maps(m, pixels.shape[1]) for method, m in maps.items()}
        facts["input_size"] = spec.image_size
    return facts, maps


def _test_probs(ctx, variant, split_name: str, split) -> np.ndarray:
    """The deployed file's probabilities on the evaluated split: from its predictions file when the
    predict stage wrote one (same file, same images), else run once through `Context.probabilities`."""
    from medlite.evaluate.predictions import read_predictions

    stored = ctx.run.root / (variant.prediction or {}).get("predictions", "-")
    if stored.is_file():
        _, labels, probs, _ = read_predictions(stored)
        if len(labels) == len(split) and (labels == split.labels).all():
            return probs
    return ctx.inference.probabilities(variant, split_name)


def _test_split(ctx):
    return ctx.recipe.evaluate.split, ctx.dataset.splits[ctx.recipe.evaluate.split]


def explain_stage(ctx: Context, variant: Variant, idx: np.ndarray, pixels: np.ndarray, targets: np.ndarray,
                  split_name: str, target_rule: str = "the true class") -> Stage[dict]:
    """Maps of one variant for the chosen images (uint8 `pixels` at the data's size), and their
    faithfulness on its deployed file. A variant at another input size (a cross-resolution student)
    explains the images at its own size; its maps are resized to the data's, so every variant's maps
    share one grid (the gallery, the agreement between variants)."""
    cfg = ctx.recipe.explain
    out = ctx.run.root / "explain" / f"{variant.name}.npz"
    spec = ctx.data_for(variant).preprocess

    def compute() -> dict:
        start = time.perf_counter()
        facts, variant_maps = explain_pixels(ctx, variant, pixels, targets, cfg)
        facts.update({"split": split_name, "images": idx.tolist(), "targets": targets.tolist(),
                      "target_rule": target_rule, "seconds": round(time.perf_counter() - start, 2)})
        _save_maps(out, variant_maps)
        done = ", ".join(m for m in facts["methods"] if "skipped" not in facts["methods"][m])
        ctx.say(f"{variant.name}: explained {len(idx)} test images ({done}) in {facts['seconds']:.1f}s")
        return facts

    def emit(facts: dict) -> dict:
        variant.explain = {**facts, "maps": ctx.run.rel(out)}
        return facts

    # `label` (multi-label only) is left out when unset: single-label explain stages keep their keys.
    exclude = {"enabled", "variants"} | ({"label"} if cfg.label is None else set())
    config = [cfg.model_dump(exclude=exclude), idx.tolist(), ctx.dataset.fingerprint(), ctx.recipe.seed]
    if spec.image_size != ctx.dataset.image_size:
        config.append(spec.image_size)
    return Stage(name=f"{variant.name}.explain", kind="explain", schema=EXPLAIN_SCHEMA, inputs=[variant],
                 config=config, outputs=[out], compute=compute, emit=emit, plan=lambda: {})


def stage_explain(ctx: Context, names: list[str] | None = None) -> None:
    """Explain the chosen variants (recipe `explain.variants`, else all) and record `variant.explain`."""
    cfg = ctx.recipe.explain
    names = names or cfg.variants or list(ctx.variants)
    unknown = [n for n in names if n not in ctx.variants]
    if unknown:
        raise UsageError(f"explain.variants: no variant {unknown[0]!r} in this run (choose from {', '.join(ctx.variants)})")
    split_name, split = _test_split(ctx)
    if ctx.planning and any(v.planned for v in ctx.variants.values()):
        # The images are chosen from every variant's predictions: not known before they all exist.
        for name in names:
            ctx.ledger.plan.append(PlannedStage(f"{name}.explain", "explain", [name], "run"))
        return
    target_rule = "the true class"
    with ctx.ledger.timed("explain"):  # choosing the images: redone on every run (it reads the predictions files)
        if ctx.dataset.multilabel:
            idx, targets, target_rule = _multilabel_targets(ctx, split_name, split, cfg)
        else:
            # The same images for every variant: a share of them ones most variants get wrong.
            # Votes from every variant of the run, so explaining a subset later picks the same images.
            wrong = np.zeros(len(split), int)
            for variant in ctx.variants.values():
                wrong += _test_probs(ctx, variant, split_name, split).argmax(1) != split.labels
            idx = select_images(split.labels, wrong * 2 > len(ctx.variants), cfg.images_per_class, ctx.recipe.seed)
            targets = split.labels[idx].astype(int)
        pixels = split.images[idx]
    maps: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        variant = ctx.variants[name]
        ctx.ledger.run_stage(explain_stage(ctx, variant, idx, pixels, targets, split_name, target_rule))
        maps[name] = _load_maps(ctx.run.root / variant.explain["maps"])
    # Lineage members explained earlier (e.g. by `medlite explain --variants`) on the same images count too.
    for variant in ctx.variants.values():
        stored = variant.explain or {}
        if variant.name not in maps and stored.get("images") == idx.tolist() and (ctx.run.root / stored.get("maps", "-")).is_file():
            maps[variant.name] = _load_maps(ctx.run.root / stored["maps"])
    for name in names:
        variant = ctx.variants[name]
        variant.explain["agreement"] = {
            other: {
                method: agreement_of(maps[name][method], maps[other][method], cfg.top_fraction)
                for method in maps[name] if method in maps[other]
            }
            for other in lineage(variant, ctx.variants) if other in maps
        }


def _multilabel_targets(ctx: Context, split_name: str, split, cfg) -> tuple[np.ndarray, np.ndarray, str]:
    """Multi-label data: (images, the label each map explains, the rule in words). With `explain.label`
    every map explains that label, on images that have the finding; else each image with at least one
    finding is explained for the label the variants give the highest mean probability. Per target label
    `images_per_class` images, a share of them ones most variants miss (p < 0.5 for a true finding)."""
    names = list(ctx.dataset.class_names)
    labels = np.asarray(split.labels)
    probs = [_test_probs(ctx, v, split_name, split) for v in ctx.variants.values()]
    mean = np.mean(probs, axis=0)
    if cfg.label is not None:
        if cfg.label not in names:
            raise UsageError(f"explain.label: {cfg.label!r} is not a label of this data (choose from {', '.join(names)})")
        k = names.index(cfg.label)
        candidates = np.flatnonzero(labels[:, k] == 1)
        if not len(candidates):
            raise UsageError(f"explain.label: no {split_name} image has the finding {cfg.label!r}")
        target = np.full(len(labels), k)
        rule = f"the label {cfg.label!r} (explain.label)"
    else:
        candidates = np.flatnonzero(labels.any(axis=1)) if labels.any() else np.arange(len(labels))
        target = mean.argmax(axis=1)
        rule = "per image, the label with the highest mean probability over the variants"
    rows = np.arange(len(labels))
    missed = np.sum([(p[rows, target] < 0.5) & (labels[rows, target] == 1) for p in probs], axis=0)
    chosen = select_images(target[candidates], missed[candidates] * 2 > len(probs), cfg.images_per_class,
                           ctx.recipe.seed)
    idx = candidates[chosen]
    return idx, target[idx].astype(int), rule


def _resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) maps -> (N, size, size), bilinear: a lower-resolution model's maps on the data's grid."""
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(np.ascontiguousarray(maps, np.float32))[:, None], size=(size, size),
                         mode="bilinear", align_corners=False)[:, 0].numpy()


def agreement_of(a: np.ndarray, b: np.ndarray, fraction: float) -> dict:
    from medlite.explain.scores import agreement

    return agreement(a, b, fraction)


def _save_maps(path: Path, maps: dict[str, np.ndarray]) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with open(tmp, "wb") as handle:  # a handle: given a name without .npz, numpy would append one
        np.savez_compressed(handle, **{k: v.astype(np.float16) for k, v in maps.items()})
    os.replace(tmp, path)


def _load_maps(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k].astype(np.float32) for k in npz.files}
