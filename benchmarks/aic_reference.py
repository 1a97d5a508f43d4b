"""Regenerate ``tests/golden/aic_step_times.json``: step times from NVIDIA aiconfigurator's measured
operator database (``pip install -e '.[aic]'``, aiconfigurator-core 0.12.0) over a grid of prefill,
decode and mixed iterations, for Llama-3.1-8B and Qwen2.5-32B (bf16, TP=1, SGLang data) on H100,
H200 and A100 SXM. The file records the package versions; ``tests/test_cost_model_reference.py`` compares our
cost model with it without needing aiconfigurator installed.

Usage: python benchmarks/aic_reference.py [--out tests/golden/aic_step_times.json] [--check]
(--check: recompute and compare with the committed file instead of writing it; exit 1 on a mismatch)

Reading of the database's iteration fields (probed, not documented there): ``sum_prefill_kv_tokens``
is the context already cached before the new prefill tokens (a 256-token prefill costs the same
with 0 or 256 of it, and grows with it beyond), ``sum_decode_kv_tokens`` the summed decode contexts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "aic_step_times.json"
SYSTEMS = {"h100": "h100_sxm", "h200": "h200_sxm", "a100": "a100_sxm"}
# SGLang data version per system: the package's "current" slot (systems/query_versions.yaml)
BACKEND_VERSIONS = {"h100_sxm": "0.5.14", "h200_sxm": "0.5.14", "a100_sxm": "0.5.10"}
# Qwen2.5-32B's config.json (REFERENCE_NUMBERS.md section 5 [C1, C4]); the package has no Qwen2.5.
QWEN25_32B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 5120,
    "intermediate_size": 27648,
    "num_attention_heads": 40,
    "num_hidden_layers": 64,
    "num_key_value_heads": 8,
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "attention_bias": True,
}
MODELS = {"llama-3.1-8b": "meta-llama/Meta-Llama-3.1-8B", "qwen2.5-32b": None}  # None: local config.json


def grid() -> list[dict[str, Any]]:
    """The iterations compared: prefill (new x cached tokens), decode (batch x context), mixed."""
    points: list[dict[str, Any]] = []
    for new in (256, 1024, 2048, 4096, 8192):
        for cached in (0, 4096, 8192):
            points.append({"kind": "prefill", "new_tokens": new, "cached_tokens": cached})
    for batch in (1, 8, 32, 64):
        for context in (2048, 8192):
            points.append({"kind": "decode", "batch": batch, "context_tokens": context})
    for new, cached, batch, context in ((512, 4096, 64, 2048), (2048, 0, 16, 4096), (256, 8192, 8, 8192)):
        points.append(
            {"kind": "mixed", "new_tokens": new, "cached_tokens": cached, "batch": batch, "context_tokens": context}
        )
    return points


def scheduled(point: dict[str, Any]) -> dict[str, int]:
    """One iteration in the database's forward-pass-metrics form."""
    prefill = point["kind"] in ("prefill", "mixed")
    decode = point["kind"] in ("decode", "mixed")
    return {
        "num_prefill_requests": 1 if prefill else 0,
        "sum_prefill_tokens": point["new_tokens"] if prefill else 0,
        "sum_prefill_kv_tokens": point["cached_tokens"] if prefill else 0,
        "num_decode_requests": point["batch"] if decode else 0,
        "sum_decode_kv_tokens": point["batch"] * point["context_tokens"] if decode else 0,
    }


def perf_model(model_name: str, system: str, tmp: Path) -> Any:
    """aiconfigurator's forward-pass model for one of ``MODELS`` on ``system`` (SGLang, bf16, TP=1)."""
    from aiconfigurator_core.sdk import RustForwardPassPerfModel

    if MODELS[model_name] is None:
        local = tmp / model_name
        local.mkdir(exist_ok=True)
        (local / "config.json").write_text(json.dumps(QWEN25_32B))
        name = str(local)
    else:
        name = str(MODELS[model_name])
    return RustForwardPassPerfModel.from_native(
        {
            "schema_version": 1,
            "model_name": name,
            "system_name": system,
            "backend": "sglang",
            "backend_version": BACKEND_VERSIONS[system],
            "tp_size": 1,
            "pp_size": 1,
            "extra": {},
        }
    )


def compute() -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in MODELS:
            for hardware, system in SYSTEMS.items():
                perf = perf_model(model_name, system, Path(tmp))
                for point in grid():
                    ms = perf.estimate_forward_pass_time_ms({"version": 1, "scheduled_requests": scheduled(point)})
                    rows.append({"model": model_name, "hardware": hardware, **point, "aic_ms": round(float(ms), 6)})
    return {
        "source": "aiconfigurator-core measured operator database (bf16, TP=1, SGLang data)",
        "versions": {"aiconfigurator-core": version("aiconfigurator-core"), "sglang_data": BACKEND_VERSIONS},
        "systems": SYSTEMS,
        "command": "python benchmarks/aic_reference.py",
        "points": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = ap.parse_args(argv)
    try:
        data = compute()
    except ImportError:
        print("aic_reference: error: aiconfigurator-core is not installed (pip install -e '.[aic]')", file=sys.stderr)
        return 2
    text = json.dumps(data, indent=1) + "\n"
    if args.check:
        same = args.out.is_file() and json.loads(args.out.read_text())["points"] == data["points"]
        print(f"{args.out}: {'matches' if same else 'DIFFERS from'} aiconfigurator {data['versions']}")
        return 0 if same else 1
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"{args.out}: {len(data['points'])} points, {data['versions']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
