"""What every backend shares around the core: setup (profiles, cost model, capacities, traces) and
the run-directory contract (one writer, one summarizer, one reader).

``harness`` imports ``kvflow`` and ``traces`` only, never ``sim``, ``real`` or ``analysis``: the
simulator, the torch backend and the SGLang replay all build on it (docs/architecture.md "Setup").
"""
