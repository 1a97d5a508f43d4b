"""The project's calibration fit, pure numpy: non-negative least squares on relative error of the
linear step-time terms that ``harness/cost_model.py`` reads from ``hardware.measured``.

Shared by ``kvflow-real calibrate`` (points measured on this machine) and
``benchmarks/aic_fit.py`` (points from aiconfigurator's measured operator database), so both
profiles come from one fit.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Fit:
    """Fitted coefficients with their mean and worst relative error over the fitted points."""

    coef: dict[str, float]
    mape: float
    max_err: float
    points: list[dict[str, float]] = field(default_factory=list)


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min sum(((x c - y) / y)^2) subject to c >= 0, by trying every active set (few columns)."""
    w = 1.0 / np.maximum(y, 1e-12)
    xw, yw = x * w[:, None], y * w
    best, best_err = np.zeros(x.shape[1]), np.inf
    for k in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), k):
            c, *_ = np.linalg.lstsq(xw[:, cols], yw, rcond=None)
            if np.any(c < 0):
                continue
            full = np.zeros(x.shape[1])
            full[list(cols)] = c
            err = float(np.sum((xw @ full - yw) ** 2))
            if err < best_err:
                best, best_err = full, err
    return best


def fit_linear(x: np.ndarray, y: np.ndarray, names: Sequence[str], points: list[dict[str, float]]) -> Fit:
    """Fit ``y ~ x c`` (c >= 0); each point gains its prediction as ``fit_s``."""
    c = nnls_relative(x, y)
    pred = x @ c
    rel = np.abs(pred - y) / np.maximum(y, 1e-12)
    for p, v in zip(points, pred):
        p["fit_s"] = float(v)
    return Fit({n: float(v) for n, v in zip(names, c)}, float(rel.mean()), float(rel.max()), points)


def fit_prefill(points: list[dict[str, float]], own_attention: bool = False) -> Fit:
    """``a + b n + c n p`` over points with ``new_tokens`` n, ``context_tokens`` p, ``time_s``;
    ``own_attention`` adds ``d n(n+1)/2`` (the new tokens' causal attention among themselves)."""
    rows = [[1.0, p["new_tokens"], p["new_tokens"] * p["context_tokens"]] for p in points]
    names = ["a_s", "b_s_per_token", "c_s_per_token_ctx"]
    if own_attention:
        for r, p in zip(rows, points):
            r.append(p["new_tokens"] * (p["new_tokens"] + 1) / 2)
        names.append("d_s_per_token_pair")
    y = np.array([p["time_s"] for p in points])
    return fit_linear(np.array(rows), y, names, points)


def fit_decode(points: list[dict[str, float]]) -> Fit:
    """``a + b B + c sum(context)`` over points with ``batch`` B, ``context_tokens``, ``time_s``."""
    x = np.array([[1.0, p["batch"], p["batch"] * p["context_tokens"]] for p in points])
    y = np.array([p["time_s"] for p in points])
    return fit_linear(x, y, ("a_s", "b_s_per_seq", "c_s_per_ctx_token"), points)


def fit_copy(points: list[dict[str, float]]) -> Fit:
    """``latency + bytes / gbps`` over points with ``bytes``, ``time_s``."""
    x = np.array([[1.0, p["bytes"]] for p in points])
    y = np.array([p["time_s"] for p in points])
    f = fit_linear(x, y, ("latency_s", "s_per_byte"), points)
    per_byte = f.coef.pop("s_per_byte")
    f.coef["gbps"] = 1.0 / (per_byte * 1e9) if per_byte > 0 else 1e6
    return f
