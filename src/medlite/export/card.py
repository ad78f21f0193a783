"""The model card that travels with every deployed file (in its `FILE.json` sidecar).

Written after evaluation, because it holds the test metrics measured on that very file (putting
them inside the file would change the bytes that were measured). Every consumer reads it through
`medlite.runtime` (`Artifact.card`): the edge runner prints it, `medlite predict` records it,
`medlite serve` shows it. The layout follows Mitchell et al., "Model Cards for Model Reporting"
(FAT* 2019), cut down to what a clinic needs to decide whether to trust the file.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

INTENDED_USE = (
    "Research and decision support only: a second reader for {dataset} images of the classes listed. "
    "Not a diagnostic device; not validated on other scanners, sites or populations. A clinician "
    "decides; the output is a probability, not a diagnosis."
)
METRICS = ("auc", "accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro", "ece", "n")


def recipe_hash(recipe) -> str:
    from medlite.recipe import dump_recipe

    return hashlib.sha256(dump_recipe(recipe).encode()).hexdigest()


def lineage(variants: dict, name: str) -> list[str]:
    """The chain of parents from the variant up to the first trained model."""
    chain, seen = [], set()
    while name and name in variants and name not in seen:
        seen.add(name)
        chain.append(name)
        name = variants[name].parent
    return chain


def build_card(ctx, variant, version: str | None) -> dict[str, Any]:
    d = ctx.dataset.summary()
    cfg = ctx.recipe.evaluate
    m = variant.reported_metrics()
    classes = list(d["classes"])
    card: dict[str, Any] = {
        "model": variant.name,
        "format": variant.format,
        "runtime": variant.runtime,
        "arch": variant.arch,
        "lineage": lineage(ctx.variants, variant.name),
        "teachers": list(variant.teachers),
        "intended_use": INTENDED_USE.format(dataset=d["name"]),
        "classes": classes,
        "positive_class": classes[1] if len(classes) == 2 else None,
        "dataset": {
            "name": d["name"], "source": d["source"], "origin": d.get("origin"), "split": d.get("split"),
            "images": d["images"], "per_class": d.get("per_class"),
            "native_size": d.get("native_size"), "native_channels": d.get("native_channels"),
            "image_size": d["image_size"], "channels": d["channels"],
        },
        "recipe": {"name": ctx.recipe.name, "sha256": recipe_hash(ctx.recipe), "seed": ctx.recipe.seed},
        "metrics": {
            "split": cfg.split,
            **{k: m.get(k) for k in METRICS if k in m},
            "ci": m.get("ci", {}),
            "confidence": cfg.confidence,
            "bootstrap": cfg.bootstrap,
        },
        "params": variant.params,
        "file_bytes": variant.file_bytes,
        # What is not what the name says, and a model no better than chance: a clinic must see it.
        "warnings": list(variant.warnings),
        "medlite_version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # An operating point chosen on validation (issue 10) lives with the file; mirror it when present.
    op = m.get("operating_point") if isinstance(m.get("operating_point"), dict) else None
    if op:
        card["operating_point"] = op
    if ctx.dataset.multilabel:  # the labels, their thresholds (chosen on validation) and per-label test figures
        per_label = m.get("per_label") or {}
        card["task"] = "multilabel"
        card["labels"] = [{
            "label": name,
            "threshold": ((op or {}).get("thresholds") or {}).get(name),
            "rule": ((op or {}).get("rules") or {}).get(name),
            **{k: (per_label.get(name) or {}).get(k) for k in ("auc", "ap", "sensitivity", "specificity", "positives")},
        } for name in classes]
        card["metrics"].update({k: m.get(k) for k in ("ap_macro", "ap_micro", "labels_defined", "undefined") if k in m})
    return card


def write_model_cards(ctx, version: str | None) -> None:
    """A card beside every variant's deployed file (rewritten each run: metrics may have changed)."""
    from medlite.runtime import CARD_KEY, PREPROCESS_KEY, VARIANT_KEY, write_sidecar

    for variant in ctx.variants.values():
        if not variant.file:
            continue
        spec = ctx.data_for(variant).preprocess.to_dict()  # the file's own input size
        # The preprocessing too: formats without metadata (.tflite) need it, and one layout serves all.
        write_sidecar(ctx.run.root / variant.file, {PREPROCESS_KEY: spec, VARIANT_KEY: variant.name,
                                                    CARD_KEY: build_card(ctx, variant, version)})
