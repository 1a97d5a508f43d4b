"""Run a workflow trace (e.g. a ChatDev import) against a live SGLang server with KVFlow hints.

Scenario: start SGLang with the plug-in (docs/sglang.md), then
    python examples/sglang_chatdev.py --trace traces/data/sample_sequential.jsonl \
        --url http://127.0.0.1:30000 --out runs/sglang_chatdev
Each request carries its workflow's steps-to-execution in ``kv_hints``; the run directory has the
simulator's requests.csv / workflows.csv / summary.json (backend "sglang").

Constants: URL defaults to SGLang's port 30000; VOCAB_SIZE maps trace token ids into a typical
Llama-3 vocabulary (tokens, not text, are sent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from real.sglang.replay import ReplayConfig, replay
from traces import load_trace

URL = "http://127.0.0.1:30000"
VOCAB_SIZE = 128_000  # tokens
DEFAULT_TRACE = Path(__file__).resolve().parents[1] / "traces" / "data" / "sample_sequential.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="kvflow-format trace (JSONL)")
    parser.add_argument("--url", default=URL)
    parser.add_argument("--out", default="runs/sglang_chatdev")
    parser.add_argument("--policy", default="kvflow", help="the server's --radix-eviction-policy")
    parser.add_argument("--model", default="")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    trace = load_trace(args.trace)
    cfg = ReplayConfig(
        args.url,
        policy=args.policy,
        model=args.model,
        concurrency=args.concurrency,
        vocab_size=VOCAB_SIZE,
        experiment="chatdev",
    )
    summary = replay(trace, args.out, cfg)
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "requests",
                    "workflows",
                    "workflow_latency_mean_s",
                    "workflow_latency_p99_s",
                    "hit_rate_gpu",
                    "makespan_s",
                )
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
