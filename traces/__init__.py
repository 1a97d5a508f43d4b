"""Workload traces for kvflow: one JSONL schema, validation, generators and log importers.

See docs/trace_format.md. Public API: load_trace, write_trace, generate, Trace, Invocation,
WorkflowDef, Segment, TraceError.
"""

from traces.generators import WORKLOADS, generate
from traces.io import load_trace, write_trace
from traces.schema import FORMAT_VERSION, Invocation, Segment, Trace, TraceError, WorkflowDef

__all__ = [
    "load_trace",
    "write_trace",
    "generate",
    "Trace",
    "Invocation",
    "WorkflowDef",
    "Segment",
    "TraceError",
    "FORMAT_VERSION",
    "WORKLOADS",
]
