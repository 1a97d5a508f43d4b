"""Ctrl-C that always reads as Ctrl-C.

A KeyboardInterrupt can land inside a library's ``finally``/``__exit__`` (OmegaConf's flag
override during Hydra's composition of the next sweep job is one we hit) and come out as that
library's error: the user pressed Ctrl-C and got ``error: ConfigCompositionException``, exit 2.
``watch`` records every SIGINT before raising KeyboardInterrupt as Python would, so a CLI can ask
``received()`` before it calls an error a user error. ``launch`` runs a console entry point with the
handler in place before the (slow) imports, so Ctrl-C at start-up is one line too, not a traceback.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from types import FrameType

EXIT_INTERRUPTED = 130
_received = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = True
    raise KeyboardInterrupt


def watch() -> None:
    """Install the recording SIGINT handler (main thread only; elsewhere signals are not ours)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def received() -> bool:
    """True once a SIGINT arrived since ``watch``: whatever error follows was caused by it."""
    return _received


def launch(module: str, tool: str) -> None:
    """Import MODULE and exit with its ``main()``; Ctrl-C before main starts exits 130, one line."""
    watch()
    try:
        entry = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{tool}: interrupted while starting; nothing was run or written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except ImportError as exc:
        if exc.name != "kvflow":  # the core itself cannot be imported (e.g. a stale compiled build)
            raise
        print(f"{tool}: {exc}", file=sys.stderr)
        sys.exit(2)
    code = entry()
    sys.exit(code if isinstance(code, int) else 0)


def kvflow_sim() -> None:
    launch("sim.cli", "kvflow-sim")


def kvflow_replay() -> None:
    launch("sim.replay_cli", "kvflow-replay")


def kvflow_trace() -> None:
    launch("traces.cli", "kvflow-trace")


def kvflow_report() -> None:
    launch("analysis.cli", "kvflow-report")


def kvflow_real() -> None:
    launch("real.cli", "kvflow-real")
