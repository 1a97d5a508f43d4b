"""harness/fit.py: the calibration fit shared by kvflow-real calibrate and benchmarks/aic_fit.py."""

import numpy as np
import pytest

from harness.fit import fit_copy, fit_decode, fit_prefill, nnls_relative


def test_nnls_relative_recovers_exact_nonnegative_coefficients():
    x = np.array([[1.0, n] for n in (1, 2, 5, 10, 40)])
    assert nnls_relative(x, x @ np.array([2.0, 0.5])) == pytest.approx([2.0, 0.5])
    # a negative least-squares slope is clamped to 0 (the best non-negative active set)
    y = np.array([5.0, 4.9, 4.7, 4.5, 3.0])
    c = nnls_relative(x, y)
    assert c[1] == 0.0 and c[0] > 0


def test_prefill_own_attention_term_is_optional_and_recovered():
    pts = [{"new_tokens": n, "context_tokens": p} for n in (64, 512, 2048, 8192) for p in (0, 4096)]
    for p in pts:
        n, c = p["new_tokens"], p["context_tokens"]
        p["time_s"] = 5e-3 + 2e-5 * n + 1e-9 * n * c + 1e-9 * n * (n + 1) / 2
    quad = fit_prefill([dict(p) for p in pts], own_attention=True)
    assert quad.coef["d_s_per_token_pair"] == pytest.approx(1e-9, rel=1e-6) and quad.max_err < 1e-9
    lin = fit_prefill([dict(p) for p in pts])
    assert list(lin.coef) == ["a_s", "b_s_per_token", "c_s_per_token_ctx"] and lin.max_err > 0.01


def test_decode_and_copy_fits():
    pts = [
        {"batch": b, "context_tokens": c, "time_s": 4e-3 + 1e-5 * b + 3e-8 * b * c}
        for b in (1, 8, 64)
        for c in (512, 4096)
    ]
    assert fit_decode(pts).coef["c_s_per_ctx_token"] == pytest.approx(3e-8)
    copies = [{"bytes": n, "time_s": 1e-5 + n / 25e9} for n in (1e6, 1e8, 1e9)]
    assert fit_copy(copies).coef == pytest.approx({"latency_s": 1e-5, "gbps": 25.0})


def test_real_calibrate_uses_the_shared_fit():
    calibrate = pytest.importorskip("real.calibrate")
    assert calibrate.fit_prefill is fit_prefill and calibrate.fit_decode is fit_decode
