"""Client helper: send workflow hints with every SGLang call (KVFLOW.md 2.2).

``WorkflowSession`` tracks one running workflow instance (a ``client_id``) over its
``kvflow.step_graph.StepGraph``: agents start and finish, and each call carries the current
steps-to-execution of every agent. ``SGLangClient`` attaches them to native ``/generate`` requests
(``kv_hints``) and to OpenAI-style requests (the ``X-KVFlow-Hints`` header, which the plug-in
copies into the request, plus ``kv_hints`` in the body for servers that keep extra fields).
Stdlib only: no ``sglang`` import, usable from any orchestrator.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

from kvflow.step_graph import StepGraph
from real.sglang.hints import HEADER, WorkflowHint, build_envelope


class WorkflowSession:
    """One workflow instance: its graph, the agents running now, and the hints they imply."""

    def __init__(
        self, client_id: str, graph: StepGraph | None = None, fixed_tokens: dict[str, int] | None = None
    ) -> None:
        self.client_id = client_id
        self.graph = graph
        self.fixed_tokens = dict(fixed_tokens or {})  # agent -> fixed-prompt length, when known
        self.running: dict[str, int] = {}  # agent -> calls in flight

    def steps(self, extra: Iterable[str] = ()) -> dict[str, float]:
        """Steps-to-execution from the running agents (plus ``extra``); {} without a graph, which
        leaves every agent equal (plain LRU, no prefetch)."""
        if self.graph is None:
            return {}
        frontier = set(self.running) | set(extra)
        return self.graph.steps_to_execution(frontier & set(self.graph.agents))

    def start(self, agent: str) -> WorkflowHint:
        """``agent`` is about to be called: mark it running and return the hint for its request."""
        self.running[agent] = self.running.get(agent, 0) + 1
        return WorkflowHint(self.client_id, agent, self.fixed_tokens.get(agent), self.steps())

    def finish(self, agent: str) -> None:
        count = self.running.get(agent, 0) - 1
        if count > 0:
            self.running[agent] = count
        else:
            self.running.pop(agent, None)

    def hint(self, agent: str) -> WorkflowHint:
        """The hint for a call of ``agent`` without changing what is running."""
        return WorkflowHint(self.client_id, agent, self.fixed_tokens.get(agent), self.steps([agent]))


def openai_kwargs(hint: WorkflowHint) -> dict[str, Any]:
    """Keyword arguments for the ``openai`` SDK: ``client.chat.completions.create(..., **openai_kwargs(h))``."""
    envelope = build_envelope(hint)
    return {"extra_headers": {HEADER: json.dumps(envelope)}, "extra_body": {"kv_hints": envelope}}


class SGLangClient:
    """Minimal HTTP client for a running SGLang server (native and OpenAI-style routes)."""

    def __init__(self, base_url: str, timeout_s: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None):
        data = json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        return urllib.request.urlopen(request, timeout=self.timeout_s)

    @staticmethod
    def generate_body(
        prompt: list[int] | str,
        sampling_params: dict[str, Any] | None = None,
        hint: WorkflowHint | None = None,
        stream: bool = False,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"sampling_params": dict(sampling_params or {}), "stream": stream}
        body["input_ids" if isinstance(prompt, list) else "text"] = prompt
        if hint is not None:
            body["kv_hints"] = build_envelope(hint)
        return body

    def generate(
        self, prompt: list[int] | str, sampling_params: dict[str, Any] | None = None, hint: WorkflowHint | None = None
    ) -> dict[str, Any]:
        """POST /generate (non-streaming); returns SGLang's JSON (``text``, ``meta_info``...)."""
        with self._post("/generate", self.generate_body(prompt, sampling_params, hint)) as response:
            return json.loads(response.read())

    def generate_stream(
        self, prompt: list[int] | str, sampling_params: dict[str, Any] | None = None, hint: WorkflowHint | None = None
    ) -> Iterator[tuple[float, dict[str, Any]]]:
        """POST /generate with ``stream``; yields (perf_counter time, chunk) per server-sent event."""
        body = self.generate_body(prompt, sampling_params, hint, stream=True)
        with self._post("/generate", body) as response:
            for raw in response:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield time.perf_counter(), json.loads(data)

    def chat(
        self, messages: list[dict[str, Any]], hint: WorkflowHint | None = None, model: str = "default", **params: Any
    ) -> dict[str, Any]:
        """POST /v1/chat/completions with the hint in the header (and body)."""
        body: dict[str, Any] = {"model": model, "messages": messages, **params}
        headers = {}
        if hint is not None:
            extra = openai_kwargs(hint)
            body.update(extra["extra_body"])
            headers = extra["extra_headers"]
        with self._post("/v1/chat/completions", body, headers) as response:
            return json.loads(response.read())
