"""ChatDev run logs -> trace (one client per log; see docs/trace_format.md, "ChatDev").

Each chat-completion usage block is one invocation. Its responder is the role that logs the next
response message ("<Role>: **A<->U on : Phase, turn N**"); agent id = "Phase:Role". Prompt =
the responder's system prompt + the phase prompt's fixed leading paragraphs (the fixed part),
then the rest of the phase's conversation so far (dynamic), fitted to the logged prompt_tokens.
Usage blocks come in three layouts: ``**[OpenAI_Usage_Info Receive]**``, ``**[Claude_Usage_Info
Receive]**`` (same log otherwise) and the oldest logs' ``[OpenAI_Usage_Info]``, whose phases,
system messages and responses are CAMEL-style lines ("PhaseType: PhaseType.DEMAND_ANALYSIS",
"AI Assistant (Role) sys message: SystemMessage(...)", "[0] AI Assistant (Role):").
"""

from __future__ import annotations

import ast
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from traces.graph import loops
from traces.importers.naming import unique_names
from traces.importers.text import fit_length, text_segments
from traces.io import READ_ERRORS, open_bytes, read_problem
from traces.limits import DEFAULT_MAX_PROMPT_TOKENS, check_limit, check_tokens
from traces.schema import FORMAT_NAME, FORMAT_VERSION, Invocation, Trace, WorkflowDef

WORKFLOW = "chatdev"
_ENTRY = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) INFO\] ", re.M)
_USAGE_TAGS = ("**[OpenAI_Usage_Info Receive]**", "**[Claude_Usage_Info Receive]**", "[OpenAI_Usage_Info]")
_USAGE = re.compile(
    r"(?:\*\*\[(?:OpenAI|Claude)_Usage_Info Receive\]\*\*|\[OpenAI_Usage_Info\])"
    r"\s*prompt_tokens: (\d+)\s*completion_tokens: (\d+)"
)
_HEADER = re.compile(r"\*\*(.+?)<->(.+?) on : (\w+), turn (\d+)\*\*")
_ROW = re.compile(r"^\| \*\*(\w+)\*\* \| (.*) \|$", re.M)
_NOT_SEND = ("HTTP Request:", "error_code=", "Retrying", *_USAGE_TAGS)
# the oldest layout: an ANSI colour, then "[turn] AI Assistant (Role):" / "AI User (Role) sys message:"
_COLOUR = re.compile(r"^\x1b\[\d+m")
_CAMEL = re.compile(r"^(?:\[(\d+)\] )?AI (Assistant|User) \(([^)]+)\)( sys message)?:")
_PHASE_TYPE = re.compile(r"^PhaseType: PhaseType\.(\w+)")


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

    def __init__(self, path: str = "<log>", max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> None:
        self.path, self.max_prompt_tokens, self.line = path, max_prompt_tokens, 0
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
        self.line = 1 + parts[0].count("\n")
        for i in range(1, len(parts) - 1, 2):
            t = _ts(parts[i])
            self.start_s = t if self.start_s is None else self.start_s
            self.entry(t, parts[i + 1].rstrip() + "\n")
            self.line += parts[i + 1].count("\n")
        while self.pending:
            self.respond(self.s.assistant or "Assistant", self.s.phase, None)
        return self.calls

    def entry(self, t: float, body: str) -> None:
        m = _USAGE.match(body)
        if m:
            counts = [self.count(m.group(k), key) for k, key in ((1, "prompt_tokens"), (2, "completion_tokens"))]
            self.pending.append((counts[0], counts[1], self.last_send, t))
            return
        if not body.startswith(_NOT_SEND):
            self.last_send = t
        if _PHASE_TYPE.match(body) or _COLOUR.match(body):
            self.camel(body)
            return
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

    def count(self, digits: str, key: str) -> int:
        """A logged token count, or ValueError("FILE:LINE: key: problem") when over the limit
        (checked on the digits first: int() refuses strings of over 4,300 digits)."""
        where = f"{self.path}:{self.line}: {key}"
        if len(digits) > len(str(self.max_prompt_tokens)):
            what = "prompt" if key == "prompt_tokens" else "output"
            raise ValueError(
                f"{where}: {what} of {digits[:24]}{'...' if len(digits) > 24 else ''} tokens exceeds "
                f"the limit of {self.max_prompt_tokens:,} tokens per call (--max-prompt-tokens)"
            )
        n = int(digits)
        check_tokens(n, self.max_prompt_tokens, where, "prompt" if key == "prompt_tokens" else "output")
        return n

    def camel(self, body: str) -> None:
        """An entry of the oldest layout: a phase start, a role's system message, the phase's
        opening prompt (no turn number) or a response ("[turn] AI Assistant (Role):")."""
        phase = _PHASE_TYPE.match(body)
        if phase:  # a call no response was logged for (one that ended the chat) was the user's
            while self.pending:
                self.respond(self.s.user or self.s.assistant or "Assistant", self.s.phase, None)
            self.s = _Session(phase="".join(w.capitalize() for w in phase.group(1).split("_")))
            return
        text = _COLOUR.sub("", body, count=1)
        m = _CAMEL.match(text)
        if m is None:  # "Task prompt:", "... terminated the chat."
            return
        turn, side, role, sys_msg = m.groups()
        content = text[m.end() :].lstrip("\n")
        if sys_msg:
            if side == "Assistant":
                self.s.assistant = role
            else:
                self.s.user = role
            system = _system_content(content)
            if system is not None:
                self.sys[role] = system
        elif turn is None:
            self.s.fixed_start, self.s.messages = [], _paragraphs(content)
        elif self.pending:
            self.respond(role, self.s.phase, content)
        else:
            self.s.messages.append(content)

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
            role = rows.get(f"{who}_role_name") or (self.s.assistant if who == "assistant" else self.s.user)
            if f"{who}_role_prompt" in rows and role:
                self.table_sys[role] = rows[f"{who}_role_prompt"]

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


def _system_content(text: str) -> str | None:
    """The ``content='...'`` of a logged ``SystemMessage(...)`` repr (None when it has none)."""
    start = text.rfind("content=")
    end = text.rstrip().rfind(")")
    if start < 0 or end <= start:
        return None
    try:
        value = ast.literal_eval(text[start + len("content=") : end])
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def read_log(path: str) -> str:
    """A log's text (gzipped or not, told by its magic bytes); ValueError("FILE:LINE: problem")
    when it cannot be read (missing, a directory, corrupt or truncated gzip)."""
    lines: list[bytes] = []
    try:
        with open_bytes(path) as f:
            for raw in f:
                lines.append(raw)
    except READ_ERRORS as exc:
        raise ValueError(f"{path}:{len(lines) + 1}: cannot read file: {read_problem(exc)}") from None
    text = b"".join(lines).decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads them


def parse_log(path: str, max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> list[Call]:
    """The calls of one log, in log order; ValueError("FILE:LINE: problem") on an unreadable log or
    a logged count over ``max_prompt_tokens``."""
    text = read_log(path)
    parser = _LogParser(path, max_prompt_tokens)
    try:
        return parser.parse(text)
    except ValueError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}:{parser.line}: {exc}") from None
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a layout this parser does not know
        raise ValueError(f"{path}:{parser.line}: malformed log entry ({type(exc).__name__})") from None


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


def import_files(
    paths: list[str],
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
) -> Trace:
    """Import ChatDev logs; logs without usage blocks are skipped with a one-line reason. A client
    is named after its log (by its path when two inputs share a file name)."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    check_limit(max_prompt_tokens)
    invocations: list[Invocation] = []
    imported, skipped = [], []
    for path, client in zip(paths, unique_names(paths, (".gz", ".log")), strict=True):
        calls = parse_log(path, max_prompt_tokens)
        if not calls:
            warn(f"{path}: skipped: no usage blocks (OpenAI or Claude prompt/completion token counts) in this log")
            skipped.append(os.path.basename(path))
            continue
        invocations += _invocations(client, calls)
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
