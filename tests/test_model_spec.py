"""ModelSpec numbers pinned against REFERENCE_NUMBERS.md sections 5 and 6."""

import pytest

from kvflow.model_spec import MODEL_NAMES, ModelSpec, load_model_spec


def test_model_names_come_from_conf():
    assert set(MODEL_NAMES) >= {"llama-3.1-8b", "qwen2.5-7b", "qwen2.5-32b", "tiny"}


@pytest.mark.parametrize(
    "name, kv_bytes, two_n_mm_gflop, a_mflop, weight_gb",
    [
        ("llama-3.1-8b", 131072, 15.01, 0.524, 16.06),
        ("qwen2.5-7b", 57344, 14.14, 0.401, 15.23),
        ("qwen2.5-32b", 262144, 63.97, 1.311, 65.53),
    ],
)
def test_reference_numbers(name, kv_bytes, two_n_mm_gflop, a_mflop, weight_gb):
    m = load_model_spec(name)
    assert m.kv_bytes_per_token == kv_bytes
    assert m.matmul_flops_per_token / 1e9 == pytest.approx(two_n_mm_gflop, abs=0.005)
    assert m.attn_flops_per_ctx_token / 1e6 == pytest.approx(a_mflop, abs=0.0005)
    assert m.weight_bytes / 1e9 == pytest.approx(weight_gb, abs=0.005)


def test_tiny_is_small_and_consistent():
    m = load_model_spec("tiny")
    assert m.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2
    # embed + lm_head + 2 layers of matmuls + norms
    assert m.params == m.matmul_params + m.vocab * m.hidden + (2 * 2 + 1) * m.hidden


def test_load_from_mapping_ignores_extra_keys():
    d = dict(
        name="x", layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=10, params=999, foo=1
    )
    m = load_model_spec(d)
    assert m == ModelSpec("x", 2, 8, 16, 2, 1, 4, 10, 999)
    assert m.kv_bytes_per_token == 2 * 2 * 1 * 4 * 2


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'gpt-9'; valid: .*llama-3.1-8b.*tiny"):
        load_model_spec("gpt-9")


def test_bad_fields_rejected():
    with pytest.raises(ValueError, match="layers"):
        ModelSpec("x", 0, 8, 16, 2, 1, 4, 10, 999)
    with pytest.raises(ValueError, match="missing field"):
        load_model_spec({"name": "x", "layers": 2})
