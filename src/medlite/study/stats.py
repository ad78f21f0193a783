"""Study statistics from scipy: summaries over seeds/folds and paired comparisons on the same test images.

- Summary per (setting, variant): mean, sample std and a two-sided Student-t interval over the
  trials (seeds x folds) of every headline metric, file size and latency. An interval never leaves
  the quantity's range (`metric_range`: [0, 1] for the metrics, >= 0 for sizes and latencies): a t
  bound past it is clipped to it and the clipped side recorded. Clipping, not a transformed or
  bootstrap interval: a logit-scale t interval is undefined at AUC 1.0 and changes what is estimated,
  and a bootstrap over 3-5 runs is far too narrow. With fewer than 3 runs there is no interval at all
  (2 runs give a t interval with 1 degree of freedom, 12.7 standard errors wide): the runs themselves
  are reported instead.
- Paired comparison of a (setting, variant) with the baseline: the AUC difference on the very
  same test images, its paired bootstrap interval (`scipy.stats.bootstrap`, percentile method;
  images are resampled jointly for both models, so the pairing is kept) and a bootstrap p-value
  (twice the smaller tail of the bootstrap distribution at 0). With several seeds/folds the
  statistic is the mean over them of the per-trial AUC difference, all trials resampled with the
  same image indices (when folds have their own test parts, their images are pooled as units).
  The p-value counts the resample itself (+1), so the smallest it can be is 2/(B+1).
- Holm's step-down correction over all comparisons controls the family-wise error rate
  (Holm 1979, "A simple sequentially rejective multiple test procedure"; statsmodels' multipletests).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from medlite.evaluate.metrics import auc_rows  # the one AUC, vectorised over resamples


# The smallest number of runs a t-interval is reported for; below it, the runs themselves.
MIN_RUNS_FOR_INTERVAL = 3
TOO_FEW_RUNS = f"too few runs for an interval (n < {MIN_RUNS_FOR_INTERVAL})"

# The range of each summarised quantity (val_ metrics share their test metric's). A metric in [0, 1];
# a difference of two such metrics in [-1, 1]; sizes and latencies non-negative, with no upper bound.
UNIT_RANGE: tuple[float, float] = (0.0, 1.0)
DIFFERENCE_RANGE: tuple[float, float] = (-1.0, 1.0)
NON_NEGATIVE: tuple[float, float] = (0.0, math.inf)
_RANGES = {**dict.fromkeys(("auc", "accuracy", "balanced_accuracy", "f1_macro", "ece"), UNIT_RANGE),
           "file_bytes": NON_NEGATIVE, "latency_ms": NON_NEGATIVE}


def metric_range(key: str) -> tuple[float, float] | None:
    """The range a summary key can take (None: unknown, not bounded)."""
    return _RANGES.get(key.removeprefix("val_"))


def bound_interval(ci: list[float], bounds: tuple[float, float] | None) -> tuple[list[float], list[str]]:
    """`ci` clipped to `bounds`, and which sides were clipped ("low", "high"); NaN stays NaN."""
    if bounds is None:
        return list(ci), []
    lo, hi = float(ci[0]), float(ci[1])
    clipped = []
    if lo < bounds[0]:
        lo, clipped = bounds[0], clipped + ["low"]
    if hi > bounds[1]:
        hi, clipped = bounds[1], clipped + ["high"]
    return [lo, hi], clipped


def describe(values: list[float], confidence: float = 0.95,
             bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """n, mean, sample std (ddof=1) and the t-interval of the mean; NaNs are left out (and counted).

    With `bounds` (see `metric_range`) the interval is clipped to them and `clipped` names the side(s).
    With fewer than MIN_RUNS_FOR_INTERVAL values `ci` is None, `runs` lists the values and
    `no_interval` says why.
    """
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=float)
    missing = len(values) - len(x)
    x = x[np.isfinite(x)]
    out: dict[str, Any] = {"n": int(len(x)), "mean": None, "std": None, "ci": None}
    if missing or len(x) < len(values):
        out["missing"] = int(len(values) - len(x))
    if bounds is not None:
        # JSON has no infinity: an open side is null.
        out["range"] = [b if math.isfinite(b) else None for b in bounds]
    if len(x) == 0:
        return out
    out["mean"] = float(x.mean())
    if len(x) >= 2:
        out["std"] = float(x.std(ddof=1))
    if len(x) < MIN_RUNS_FOR_INTERVAL:
        out["runs"] = [float(v) for v in x]
        out["no_interval"] = TOO_FEW_RUNS
        return out
    sem = out["std"] / math.sqrt(len(x))
    if sem > 0:
        lo, hi = stats.t.interval(confidence, len(x) - 1, loc=out["mean"], scale=sem)
    else:
        lo = hi = out["mean"]
    out["ci"], clipped = bound_interval([float(lo), float(hi)], bounds)
    if clipped:
        out["clipped"] = clipped
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' `multipletests(method="holm")`); reject where adjusted
    p <= alpha. A NaN p-value (an untestable comparison) stays NaN and is not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(len(p), np.nan)
    finite = np.isfinite(p)
    if finite.any():
        adjusted[finite] = multipletests(p[finite], method="holm")[1]
    return adjusted.tolist()


def _auc_rows(probs: np.ndarray, labels: np.ndarray, idx: np.ndarray, label: int | None = None) -> np.ndarray:
    """`auc_rows`, and for multi-hot labels (n, K) the mean AUC over the labels defined in each resample
    (MedMNIST's multi-label AUC, as `evaluate.multilabel.bootstrap_intervals`), or label `label`'s AUC."""
    if np.ndim(labels) == 1:
        return auc_rows(probs, labels, idx)
    import warnings

    columns = [label] if label is not None else range(labels.shape[1])
    rows = np.vstack([auc_rows(np.column_stack([1 - probs[:, k], probs[:, k]]), labels[:, k].astype(np.int64), idx)
                      for k in columns])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where no label is defined: NaN
        return np.nanmean(rows, axis=0)


def paired_auc_difference(
    pairs: list[dict], *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0, label: int | None = None
) -> dict[str, Any]:
    """Paired bootstrap of mean AUC(A) - AUC(B) over `pairs`.

    Each pair: {"group": hashable test-set id, "labels": (n,), "a": probs (n, K), "b": probs (n, K)};
    pairs of one group share their test images (same order). Units (images) are pooled over the
    groups and resampled jointly; each pair's AUC difference uses the resampled units of its group.
    Multi-label pairs (labels (n, K) multi-hot) compare the mean AUC over labels, or with `label` that
    label's AUC (the per-label tests, Holm-corrected by the caller).
    """
    from scipy.stats import bootstrap

    groups: dict[Any, list[dict]] = {}
    for pair in pairs:
        groups.setdefault(pair["group"], []).append(pair)
    offsets, total = {}, 0
    for key, members in groups.items():
        n = len(members[0]["labels"])
        for m in members:
            if len(m["labels"]) != n or not np.array_equal(m["labels"], members[0]["labels"]):
                raise ValueError("paired comparison: trials of one test set disagree on its images")
        offsets[key] = (total, n)
        total += n

    def per_pair(units: np.ndarray) -> np.ndarray:
        """(pairs x B) AUC differences for resampled global unit indices `units` (B x total)."""
        diffs = []
        for key, members in groups.items():
            start, n = offsets[key]
            inside = (units >= start) & (units < start + n)
            # This group's resampled units as local indices (-1: a unit of another group).
            local = np.where(inside, units - start, -1)
            for m in members:
                diffs.append(_auc_rows(m["a"], m["labels"], local, label) - _auc_rows(m["b"], m["labels"], local, label))
        return np.vstack(diffs)

    def statistic(units: np.ndarray, axis: int = -1) -> np.ndarray:
        units = np.asarray(units)
        with warnings.catch_warnings():
            # A resample in which no pair defines the AUC (a rare label drawn without positives):
            # NaN, left out of the distribution below and counted, not averaged in.
            warnings.simplefilter("ignore", RuntimeWarning)
            if units.ndim == 1:
                return np.nanmean(per_pair(units[None, :]), axis=0)[0]
            return np.nanmean(per_pair(units), axis=0)

    observed = float(statistic(np.arange(total)))
    with warnings.catch_warnings():
        # scipy warns (DegenerateDataWarning) when the distribution holds such NaNs; they are handled here.
        warnings.simplefilter("ignore")
        res = bootstrap(
            (np.arange(total),), statistic, n_resamples=resamples, confidence_level=confidence,
            method="percentile", paired=True, vectorized=True, batch=max(1, min(resamples, 200_000 // max(total, 1))),
            rng=np.random.default_rng(seed),
        )
    dist = res.bootstrap_distribution
    undefined = int((~np.isfinite(dist)).sum())
    dist = dist[np.isfinite(dist)]
    # Two-sided bootstrap p-value with the +1 correction (Davison & Hinkley 1997, eq. 4.11): never 0,
    # since B resamples cannot show a tail rarer than about 1/(B+1).
    tail = min(int((dist <= 0).sum()), int((dist >= 0).sum()))
    p = float(min(1.0, 2 * (tail + 1) / (len(dist) + 1))) if len(dist) else float("nan")
    # A percentile interval of AUC differences cannot leave [-1, 1]; bounded all the same, as every
    # interval medlite reports is (a clipped side would be recorded, like describe's).
    if undefined and len(dist):  # the percentile interval of the resamples that define the statistic
        tail_pct = (1 - confidence) / 2 * 100
        low, high = np.percentile(dist, [tail_pct, 100 - tail_pct])
    else:
        low, high = res.confidence_interval.low, res.confidence_interval.high
    ci, clipped = bound_interval([float(low), float(high)], DIFFERENCE_RANGE)
    return {
        "delta_auc": observed,
        "ci": ci,
        **({"clipped": clipped} if clipped else {}),
        "p": p,
        "pairs": len(pairs),
        "images": total,
        "resamples": resamples,
        **({"undefined_resamples": undefined} if undefined else {}),
        "method": "paired bootstrap (scipy.stats.bootstrap, percentile) of the mean AUC difference",
    }


def paired_runs_test(a: list[float], b: list[float], *, folds: int | None = None) -> dict[str, Any]:
    """Across training runs: is the mean of the per-run AUC differences (A and B on the same seed and
    fold) different from 0? The image bootstrap above is conditional on the trained models; this asks
    whether the method wins again when it is trained again, so the baseline's own seed-to-seed
    spread counts. Low power with 3 runs: read a large p as "not shown", not as "no difference".

    Seeds only: the paired t-test (`scipy.stats.ttest_rel`). With folds the runs share training
    images, which makes the plain t-test too liberal; the variance is inflated to
    (1/J + 1/(k-1)) * s^2 over J runs of k-fold CV (Nadeau & Bengio 2003, "Inference for the
    generalization error"; Bouckaert & Frank 2004's corrected repeated k-fold CV test).
    """
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    out: dict[str, Any] = {"n": n, "mean_delta": float(d.mean()) if n else None, "p": float("nan")}
    if folds and folds > 1:
        out["test"] = f"corrected resampled t-test over {n} runs of {folds}-fold CV (Nadeau & Bengio 2003)"
    else:
        out["test"] = f"paired t-test over {n} runs (scipy.stats.ttest_rel)"
    if n < 2:
        out["reason"] = "fewer than 2 paired runs"
        return out
    sd = float(d.std(ddof=1))
    if sd < 1e-12:  # no spread: the same models (p = 1), else a t statistic without a scale (undefined)
        out["reason"] = "identical differences in every run"
        out["p"] = 1.0 if abs(d.mean()) < 1e-12 else float("nan")
        return out
    if folds and folds > 1:
        t = float(d.mean()) / math.sqrt((1 / n + 1 / (folds - 1)) * sd * sd)
        out["p"] = float(2 * stats.t.sf(abs(t), n - 1))
    else:
        out["p"] = float(stats.ttest_rel(np.asarray(a, float), np.asarray(b, float), nan_policy="omit").pvalue)
    return out
