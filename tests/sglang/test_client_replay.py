"""Client hints and trace replay against a tiny fake SGLang server on 127.0.0.1 (stdlib only)."""

from __future__ import annotations

import csv
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.run_dir import validate_run_dir
from kvflow.step_graph import StepGraph
from real.sglang.client import SGLangClient, WorkflowSession, openai_kwargs
from real.sglang.hints import HEADER, WorkflowHint, build_envelope, parse_envelope
from real.sglang.replay import ReplayConfig, replay
from traces import generate, load_trace

SAMPLE = Path(__file__).resolve().parents[2] / "traces" / "data" / "sample_sequential.jsonl"


class FakeSGLang(BaseHTTPRequestHandler):
    """/generate (streaming or not) and /v1/chat/completions; records every request body."""

    seen: list = []
    prefixes: set = set()
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/v1/chat/completions":
            return self._json({"choices": [{"message": {"content": "ok"}}]})
        ids = body.get("input_ids") or []
        with self.lock:  # a prefix cache in miniature: a prompt hits its longest cached prefix
            cached = max((n for n in range(len(ids), 0, -1) if tuple(ids[:n]) in self.prefixes), default=0)
            self.prefixes.update(tuple(ids[:n]) for n in range(1, len(ids) + 1))
        n_out = body["sampling_params"].get("max_new_tokens", 1)
        meta = {"prompt_tokens": len(ids), "completion_tokens": n_out, "cached_tokens": cached}
        if not body.get("stream"):
            return self._json({"text": "x" * n_out, "meta_info": meta})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(n_out):
            chunk = {"text": "x" * (i + 1), "meta_info": {**meta, "completion_tokens": i + 1}}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def _json(self, obj):
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    FakeSGLang.seen, FakeSGLang.prefixes = [], set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeSGLang)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_envelope_round_trip_and_sglang_accepts_it():
    from sglang.srt.managers.kv_hints import decode_kv_hints_envelope

    hint = WorkflowHint("c", "a", 10, {"a": 0, "b": 1, "c": math.inf})
    envelope = build_envelope(hint, "m")
    assert envelope["actions"][0]["payload"]["steps"] == {"a": 0, "b": 1, "c": None}
    assert parse_envelope(envelope) == hint
    assert parse_envelope(decode_kv_hints_envelope(json.loads(json.dumps(envelope)))) == hint
    with pytest.raises(ValueError):
        parse_envelope({"actions": [{"action_type": "kvflow.workflow", "payload": {"client_id": "c"}}]})
    assert parse_envelope({"actions": [{"action_type": "other", "payload": {}}]}) is None


def test_session_tracks_steps():
    graph = StepGraph.from_dict({"agents": ["p", "c", "r"], "edges": [["p", "c"], ["c", "r"]]})
    session = WorkflowSession("wf", graph, {"p": 12})
    hint = session.start("p")
    assert hint.steps == {"p": 0, "c": 1, "r": 2} and hint.fixed_tokens == 12
    session.finish("p")
    assert session.start("c").steps == {"p": math.inf, "c": 0, "r": 1}
    assert WorkflowSession("x").start("p").steps == {}  # no graph: no ranking info


def test_client_sends_hints_native_and_openai(server):
    client = SGLangClient(server)
    hint = WorkflowHint("wf", "coder", 4, {"coder": 0, "reviewer": 1})
    out = client.generate([1, 2, 3, 4, 5], {"max_new_tokens": 2}, hint)
    assert out["meta_info"]["completion_tokens"] == 2
    client.chat([{"role": "user", "content": "hi"}], hint)
    (p1, _, b1), (p2, h2, b2) = FakeSGLang.seen
    assert p1 == "/generate" and parse_envelope(b1["kv_hints"]) == hint
    assert p2 == "/v1/chat/completions" and parse_envelope(json.loads(h2[HEADER.lower()])) == hint
    assert parse_envelope(b2["kv_hints"]) == hint
    assert set(openai_kwargs(hint)) == {"extra_headers", "extra_body"}


def test_replay_writes_run_directory(server, tmp_path):
    trace = load_trace(SAMPLE)
    summary = replay(trace, tmp_path, ReplayConfig(server, policy="kvflow", concurrency=4))
    rows = list(csv.DictReader((tmp_path / "requests.csv").open()))
    assert [r["request_id"] for r in rows] == [inv.id for inv in trace.invocations]
    assert summary["backend"] == "sglang" and summary["requests"] == len(trace.invocations)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert validate_run_dir(tmp_path) == summary  # the one run-directory contract of every backend
    assert (tmp_path / "workflows.csv").read_text().startswith("client_id,start_s,end_s,latency_s")
    assert summary["workflows"] == 1 and summary["workflow_latency_mean_s"] > 0
    assert 0 < summary["hit_rate_gpu"] < 1  # warm-up cached the fixed prompts
    # requests of one sequential workflow ran one after another, each hinting its successor
    bodies = [b for p, _, b in FakeSGLang.seen if p == "/generate"]
    assert len(bodies) == len(trace.invocations)
    for inv, body in zip(trace.invocations, bodies):
        hint = parse_envelope(body["kv_hints"])
        assert (hint.client_id, hint.agent_id) == (inv.client_id, inv.agent_id)
        assert hint.steps[inv.agent_id] == 0 and hint.fixed_tokens == trace.fixed_tokens(inv)
        assert body["sampling_params"]["max_new_tokens"] == inv.output_tokens
    first = parse_envelope(bodies[0]["kv_hints"])
    assert first.steps == {"agent0": 0, "agent1": 1, "agent2": 2}


def test_replay_concurrent_workflows(server, tmp_path):
    trace = generate("concurrent", agents=3, workflows=4, fixed_tokens=16, dynamic_tokens=4, output_tokens=2)
    summary = replay(trace, tmp_path, ReplayConfig(server, concurrency=8, vocab_size=1000))
    assert summary["workflows"] == 4 and summary["requests"] == len(trace.invocations)
    bodies = [b for p, _, b in FakeSGLang.seen if p == "/generate"]
    assert all(max(b["input_ids"]) < 1000 for b in bodies)
