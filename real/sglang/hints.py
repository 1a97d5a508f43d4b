"""Workflow hints on the wire: one ``kvflow.workflow`` action inside SGLang's ``kv_hints`` envelope.

KVFLOW.md 2.2: each request carries its ``client_id``, ``agent_id``, where the fixed prompt ends
(``fixed_tokens``; optional) and the steps-to-execution of every agent of that client. SGLang 0.5.23
passes the envelope ``{protocol_version, message_id, actions: [...]}`` from the native /generate
API to the scheduler's ``Req.kv_hints`` untouched; consumers ignore action types they do not
implement. JSON has no infinity, so an agent that will not run within the horizon is ``null``.

Pure Python: the client builds envelopes and the server parses them with the same code.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = "1"
ACTION_TYPE = "kvflow.workflow"
ACTION_VERSION = "1"
HEADER = "X-KVFlow-Hints"  # OpenAI-compatible routes drop unknown body fields; headers survive


@dataclass(frozen=True)
class WorkflowHint:
    client_id: str
    agent_id: str
    fixed_tokens: int | None = None  # None: infer from the agent's history
    steps: dict[str, float] = field(default_factory=dict)  # agent -> steps-to-execution (inf allowed)

    @property
    def user(self) -> tuple[str, str]:
        return (self.client_id, self.agent_id)


def _steps_to_json(steps: Mapping[str, float]) -> dict[str, float | None]:
    return {
        str(a): (None if math.isinf(s) else (int(s) if float(s).is_integer() else float(s))) for a, s in steps.items()
    }


def build_envelope(hint: WorkflowHint, message_id: str | None = None) -> dict[str, Any]:
    """The JSON ``kv_hints`` value for one request."""
    payload: dict[str, Any] = {
        "client_id": hint.client_id,
        "agent_id": hint.agent_id,
        "steps": _steps_to_json(hint.steps),
    }
    if hint.fixed_tokens is not None:
        payload["fixed_tokens"] = int(hint.fixed_tokens)
    return {
        "protocol_version": PROTOCOL_VERSION,
        "message_id": message_id or uuid.uuid4().hex,
        "actions": [
            {"action_id": "kvflow-0", "action_type": ACTION_TYPE, "action_version": ACTION_VERSION, "payload": payload}
        ],
    }


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def parse_envelope(envelope: Any) -> WorkflowHint | None:
    """The first ``kvflow.workflow`` action of a dict or ``KvHintsEnvelope``; None if absent.

    Malformed payloads raise ``ValueError`` (the component that implements an action type
    validates it, per SGLang's kv_hints contract)."""
    if envelope is None:
        return None
    for action in _get(envelope, "actions", None) or ():
        if _get(action, "action_type") != ACTION_TYPE:
            continue
        payload = _get(action, "payload") or {}
        client, agent = payload.get("client_id"), payload.get("agent_id")
        if not isinstance(client, str) or not isinstance(agent, str) or not client or not agent:
            raise ValueError(f"{ACTION_TYPE}: client_id and agent_id must be non-empty strings")
        fixed = payload.get("fixed_tokens")
        if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 0):
            raise ValueError(f"{ACTION_TYPE}: fixed_tokens must be a non-negative integer, got {fixed!r}")
        steps_in = payload.get("steps") or {}
        if not isinstance(steps_in, Mapping):
            raise ValueError(f"{ACTION_TYPE}: steps must be an object agent -> steps|null")
        steps: dict[str, float] = {}
        for name, value in steps_in.items():
            if value is None:
                steps[str(name)] = math.inf
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                steps[str(name)] = float(value)
            else:
                raise ValueError(f"{ACTION_TYPE}: steps[{name!r}] must be >= 0 or null, got {value!r}")
        return WorkflowHint(client, agent, fixed, steps)
    return None
