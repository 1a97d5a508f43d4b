"""ChatDev run logs -> trace (one client per log; see docs/trace_format.md, "ChatDev").

Each chat-completion usage block is one invocation. Its responder is the role that logs the next
response message ("<Role>: **A<->U on : Phase, turn N**"); agent id = "Phase:Role". Prompt =
the responder's system prompt + the phase prompt's fixed leading paragraphs (the fixed part),
then the rest of the phase's conversation so far (dynamic), fitted to the logged prompt_tokens.
"""

from __future__ import annotations

import gzip
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from traces.graph import loops
from traces.importers.text import fit_length, text_segments
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Trace, WorkflowDef

WORKFLOW = "chatdev"
_ENTRY = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) INFO\] ", re.M)
_USAGE = re.compile(r"\*\*\[OpenAI_Usage_Info Receive\]\*\*\s*prompt_tokens: (\d+)\s*completion_tokens: (\d+)")
_HEADER = re.compile(r"\*\*(.+?)<->(.+?) on : (\w+), turn (\d+)\*\*")
_ROW = re.compile(r"^\| \*\*(\w+)\*\* \| (.*) \|$", re.M)
_NOT_SEND = ("HTTP Request:", "error_code=", "**[OpenAI_Usage_Info Receive]**", "Retrying")


@dataclass
class Call:
    """One LLM call recovered from a log."""

    phase: str
    role: str
    fixed_text: list[str]
    dynamic_text: list[str]
    prompt_tokens: int
    completion_tokens: int
    send_s: float
    recv_s: float


@dataclass
class _Session:
    phase: str = "Preprocess"
    assistant: str = ""
    user: str = ""
    template: str = ""
    fixed_start: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _ts(text: str) -> float:
    for fmt in ("%Y-%d-%m %H:%M:%S", "%Y-%m-%d %H:%M:%S"):  # ChatDev logs print year-day-month
        try:
            return datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    raise ValueError(f"bad timestamp {text!r}")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _paragraphs(text: str) -> list[str]:
    parts = re.split(r"(?<=\n\n)", text)
    return [p for p in parts if p]


def _split_bracket(body: str) -> tuple[str | None, str]:
    """'<meta>\\n\\n[system prompt]\\n\\ncontent' -> (system prompt, content)."""
    rest = body.split("\n\n", 1)[1] if "\n\n" in body else ""
    if rest.startswith("["):
        end = rest.find("]\n\n")
        if end < 0 and rest.rstrip().endswith("]"):
            return rest.strip()[1:-1], ""
        if end >= 0:
            return rest[1:end], rest[end + 3 :]
    return None, rest


class _LogParser:
    """Walks a log's timestamped entries and pairs usage blocks with response messages (FIFO)."""

    def __init__(self) -> None:
        self.s = _Session()
        self.tables: list[str] = []
        self.sys: dict[str, str] = {}
        self.table_sys: dict[str, str] = {}
        self.pending: list[tuple[int, int, float, float]] = []
        self.calls: list[Call] = []
        self.last_send = 0.0
        self.start_s: float | None = None

    def parse(self, text: str) -> list[Call]:
        parts = _ENTRY.split(text)
        for i in range(1, len(parts) - 1, 2):
            t = _ts(parts[i])
            self.start_s = t if self.start_s is None else self.start_s
            self.entry(t, parts[i + 1].rstrip() + "\n")
        while self.pending:
            self.respond(self.s.assistant or "Assistant", self.s.phase, None)
        return self.calls

    def entry(self, t: float, body: str) -> None:
        m = _USAGE.match(body)
        if m:
            self.pending.append((int(m.group(1)), int(m.group(2)), self.last_send, t))
            return
        if not body.startswith(_NOT_SEND):
            self.last_send = t
        first = body.split("\n", 1)[0]
        if first.startswith("System: **[chatting]**"):
            self.table(body, chatting=True)
        elif first.startswith("System: **[RolePlaying]**"):
            self.table(body, chatting=False)
        elif ": **[Start Chat]**" in first:
            self.start_chat(body)
        else:
            name, _, rest = first.partition(": ")
            hdr = _HEADER.match(rest)
            if hdr or (name and name in (self.s.assistant, self.s.user) and not rest.startswith("thinking back")):
                self.response(name, body, hdr)

    def table(self, body: str, chatting: bool) -> None:
        rows = dict(_ROW.findall(body))
        if chatting:
            self.s = _Session(phase=rows.get("phase_name", "Unknown"), template=_norm(rows.get("phase_prompt", "")))
        elif self.tables[-1:] != ["chatting"]:
            self.s = _Session()  # a RolePlaying without a phase table: ChatDev's preprocessing
        self.tables.append("chatting" if chatting else "roleplaying")
        self.s.assistant = rows.get("assistant_role_name", self.s.assistant)
        self.s.user = rows.get("user_role_name", self.s.user)
        for who in ("assistant", "user"):
            if f"{who}_role_prompt" in rows:
                self.table_sys[rows[f"{who}_role_name"]] = rows[f"{who}_role_prompt"]

    def start_chat(self, body: str) -> None:
        system, content = _split_bracket(body)
        if system is not None and self.s.assistant:
            self.sys[self.s.assistant] = system
        paras = _paragraphs(content)
        n_fixed = 0
        while (
            self.s.template
            and n_fixed < len(paras)
            and _norm(paras[n_fixed])
            and _norm(paras[n_fixed]) in self.s.template
        ):
            n_fixed += 1
        self.s.fixed_start = paras[:n_fixed]
        self.s.messages = paras[n_fixed:]

    def response(self, name: str, body: str, hdr: re.Match[str] | None) -> None:
        system, content = _split_bracket(body) if hdr else (None, body.split(": ", 1)[1])
        if hdr and system is not None:
            other = hdr.group(2) if name == hdr.group(1) else hdr.group(1)
            self.sys[other] = system
        if self.pending:
            self.respond(name, hdr.group(3) if hdr else self.s.phase, content)
        else:
            self.s.messages.append(content)

    def respond(self, role: str, phase: str, content: str | None) -> None:
        prompt, completion, send, recv = self.pending.pop(0)
        system = self.sys.get(role) or self.table_sys.get(role) or f"You are {role}."
        fixed = [line for line in system.splitlines(keepends=True)] + self.s.fixed_start
        self.calls.append(
            Call(
                phase,
                role,
                fixed,
                list(self.s.messages),
                prompt,
                completion,
                send - (self.start_s or 0.0),
                recv - (self.start_s or 0.0),
            )
        )
        if content is not None:
            self.s.messages.append(content)


def parse_log(path: str) -> list[Call]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return _LogParser().parse(f.read())


def _client_name(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".gz", ".log"):
        name = name[: -len(ext)] if name.endswith(ext) else name
    return name


def _invocations(client: str, calls: list[Call]) -> list[Invocation]:
    out: list[Invocation] = []
    for i, c in enumerate(calls):
        fixed = text_segments(c.fixed_text)
        segs, n_fixed = fit_length(fixed + text_segments(c.dynamic_text), len(fixed), c.prompt_tokens, "pad")
        prev = calls[i - 1] if i else None
        out.append(
            Invocation(
                id=f"{client}/{i}",
                client_id=client,
                workflow=WORKFLOW,
                agent_id=f"{c.phase}:{c.role}",
                step=i,
                segments=segs,
                fixed_segments=n_fixed,
                output_tokens=c.completion_tokens,
                deps=[out[-1].id] if out else [],
                arrival_s=max(c.send_s, 0.0) if prev is None else None,
                delay_s=max(0.0, c.send_s - prev.recv_s) if prev else 0.0,
            )
        )
    return out


def _graph(invocations: list[Invocation]) -> tuple[list[str], dict]:
    """The observed agent-transition graph (union over logs); joins with several inputs are OR."""
    by_id = {inv.id: inv for inv in invocations}
    agents = sorted({inv.agent_id for inv in invocations})
    edges = sorted({(by_id[d].agent_id, inv.agent_id) for inv in invocations for d in inv.deps})
    preds: dict[str, set[str]] = {}
    for a, b in edges:
        preds.setdefault(b, set()).add(a)
    nodes = {a: ({"aggregation": "OR"} if len(preds.get(a, ())) > 1 else {}) for a in agents}
    graph = {"agents": nodes, "edges": [list(e) for e in edges]}
    if loops(graph):
        graph["horizon"] = 2 * len(agents)
    return agents, graph


def import_files(paths: list[str], seed: int = 0, warn: Callable[[str], None] | None = None) -> Trace:
    """Import ChatDev logs; logs without usage blocks are skipped with a one-line reason."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    invocations: list[Invocation] = []
    imported, skipped = [], []
    for path in paths:
        calls = parse_log(path)
        if not calls:
            warn(f"{path}: skipped: no OpenAI usage blocks (prompt/completion token counts) in this log")
            skipped.append(os.path.basename(path))
            continue
        invocations += _invocations(_client_name(path), calls)
        imported.append(os.path.basename(path))
    agents, graph = _graph(invocations)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "provenance": {
            "importer": "chatdev",
            "sources": imported,
            "skipped": skipped,
            "gaps": "recorded: each call's send time - the previous call's receive time (delay)",
        },
    }
    return Trace(meta, {WORKFLOW: WorkflowDef(WORKFLOW, agents, graph)} if invocations else {}, invocations)
