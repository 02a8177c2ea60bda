"""Feature statistics with the keys and shapes LeRobot v3 keeps (meta/stats.json and the per-episode
``stats/<feature>/<stat>`` columns): min, max, mean, std, count and the q01/q10/q50/q90/q99 quantiles.

Vectors [T, D] get [D] statistics computed exactly over the frames. Images get one value per channel,
shaped [3, 1, 1], over pixel values scaled to [0, 1] of up to ``IMAGE_SAMPLES`` frames of an episode;
over a dataset they are combined the way LeRobot combines episodes (count-weighted means and variances,
count-weighted quantiles).
"""
from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
IMAGE_SAMPLES = 100


def feature_stats(x: np.ndarray) -> dict:
    """x [T, D] (or [T]) -> per-dimension statistics as JSON-ready lists."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    integer = np.issubdtype(x.dtype, np.integer)
    xf = x.astype(np.float64)
    extreme = (lambda v: v.astype(np.int64).tolist()) if integer else (lambda v: v.tolist())
    stats = {"min": extreme(x.min(0)), "max": extreme(x.max(0)), "mean": xf.mean(0).tolist(),
             "std": xf.std(0).tolist(), "count": [len(x)]}
    stats.update({k: np.quantile(xf, q, axis=0).tolist() for k, q in QUANTILES.items()})
    return stats


def image_stats(images: np.ndarray) -> dict:
    """images [T, H, W, 3] uint8 -> per-channel statistics [3, 1, 1] over values in [0, 1], from up to
    IMAGE_SAMPLES evenly spaced frames; count is the number of frames used."""
    idx = np.unique(np.linspace(0, len(images) - 1, min(len(images), IMAGE_SAMPLES)).round().astype(int))
    px = images[idx].reshape(-1, 3).astype(np.float64) / 255.0  # [N, 3]
    per_channel = {"min": px.min(0), "max": px.max(0), "mean": px.mean(0), "std": px.std(0)}
    per_channel.update({k: np.quantile(px, q, axis=0) for k, q in QUANTILES.items()})
    stats = {k: v.reshape(3, 1, 1).tolist() for k, v in per_channel.items()}
    stats["count"] = [len(idx)]
    return stats


def combine_stats(episodes: list[dict]) -> dict:
    """Per-episode statistics of one feature -> the dataset's (LeRobot's aggregation rule)."""
    counts = np.array([s["count"][0] for s in episodes], np.float64)
    w = counts / counts.sum()

    def stack(key):
        return np.stack([np.asarray(s[key], np.float64) for s in episodes])

    def weighted(a):
        return np.tensordot(w, a, axes=1)

    mean = weighted(stack("mean"))
    var = weighted(stack("std") ** 2 + (stack("mean") - mean) ** 2)
    out = {"min": stack("min").min(0), "max": stack("max").max(0), "mean": mean, "std": np.sqrt(var)}
    out.update({k: weighted(stack(k)) for k in QUANTILES})
    result = {k: v.tolist() for k, v in out.items()}
    if all(np.asarray(s["min"]).dtype.kind in "iu" for s in episodes):
        result["min"], result["max"] = (np.asarray(result[k]).astype(np.int64).tolist() for k in ("min", "max"))
    result["count"] = [int(counts.sum())]
    return result
