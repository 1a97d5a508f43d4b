"""OpenAI-style chat sessions (JSONL) -> trace.

Each line: {"messages": [{"role", "content", ...}], "session_id"?, "agent"?, "timestamp"?} (a bare
list of messages is accepted too). Every assistant turn is an invocation whose prompt is the
messages before it (leading system messages = the fixed part) and whose output is the turn's text.
Lines with the same session_id continue one client; each turn depends on the session's previous turn.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from traces.importers.jsonl import json_lines
from traces.importers.naming import unique_names
from traces.importers.text import estimate_tokens, text_segments
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS, check_limit, check_tokens
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Trace, WorkflowDef

WORKFLOW = "openai"


def _message_text(msg: dict[str, Any]) -> str:
    content = msg.get("content") or ""
    if isinstance(content, list):  # multi-part content: keep the text parts
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return f"<|{msg.get('role', '')}|>{content}"


def _session(obj: Any, where: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if isinstance(obj, list):
        obj = {"messages": obj}
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
        raise ValueError(f"{where}: expected a list of {{role, content}} messages")
    return msgs, obj


def _client(session_id: Any, default: str, where: str) -> str:
    """The session's client name: its ``session_id`` (a non-empty string or an integer), else ``default``."""
    if session_id is None:
        return default
    if isinstance(session_id, bool) or not isinstance(session_id, (str, int)) or session_id == "":
        raise ValueError(f"{where}: session_id must be a non-empty string or an integer, got {session_id!r}")
    return str(session_id)


def import_files(
    paths: list[str],
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> Trace:
    """Import chat-session files; a line without a session_id is a client of its own, named
    ``<file>:<line>`` (by its path when two inputs share a file name)."""
    check_limit(max_prompt_tokens)
    invocations: list[Invocation] = []
    last_of: dict[str, str] = {}
    steps: dict[str, int] = {}
    agents: list[str] = []
    t0: float | None = None
    for path, name in zip(paths, unique_names(paths, ()), strict=True):
        for where, obj in json_lines(path):
            lineno = where.rsplit(":", 1)[1]
            msgs, info = _session(obj, where)
            client = _client(info.get("session_id"), f"{name}:{lineno}", where)
            ts = info.get("timestamp")
            if isinstance(ts, (int, float)) and t0 is None:
                t0 = float(ts)
            n_sys = next((i for i, m in enumerate(msgs) if m.get("role") != "system"), len(msgs))
            texts = [_message_text(m) for m in msgs]
            first = True
            for i, msg in enumerate(msgs):
                if msg.get("role") != "assistant" or i == 0:
                    continue
                agent = str(msg.get("name") or info.get("agent") or "assistant")
                if agent not in agents:
                    agents.append(agent)
                fixed = text_segments(texts[: min(n_sys, i)])
                segs = fixed + text_segments(texts[min(n_sys, i) : i])
                check_tokens(sum(s.n_tokens for s in segs), max_prompt_tokens, f"{where}: messages[{i}]")
                inv_id = f"{client}/{len(invocations)}"
                arrival = max(0.0, float(ts) - (t0 or 0.0)) if first and isinstance(ts, (int, float)) else None
                if first and client not in last_of and arrival is None:
                    arrival = 0.0
                invocations.append(
                    Invocation(
                        id=inv_id,
                        client_id=client,
                        workflow=WORKFLOW,
                        agent_id=agent,
                        step=steps.get(client, 0),
                        segments=segs,
                        fixed_segments=len(fixed),
                        output_tokens=estimate_tokens(str(msg.get("content") or "")),
                        deps=[last_of[client]] if client in last_of else [],
                        arrival_s=arrival,
                    )
                )
                last_of[client] = inv_id
                steps[client] = steps.get(client, 0) + 1
                first = False
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "provenance": {
            "importer": "openai",
            "sources": [os.path.basename(p) for p in paths],
            "gaps": (
                "derived: only request timestamps are recorded (arrival); closed-loop replay uses "
                "timestamp - previous timestamp - the calls' service time (none recorded: the backend's "
                "estimate), floored at 0"
            ),
        },
    }
    workflows = {WORKFLOW: WorkflowDef(WORKFLOW, agents, None)} if invocations else {}
    return Trace(meta, workflows, invocations)
