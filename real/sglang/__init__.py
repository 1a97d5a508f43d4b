"""KVFlow inside a real SGLang 0.5.23 server (install with the ``sglang`` extra).

- ``real.sglang.plugin``: the ``sglang.srt.plugins`` entry point (policy, backend, hooks);
- ``real.sglang.policy`` / ``cache`` / ``prefetch``: the pieces it registers (need ``sglang``);
- ``real.sglang.hints`` / ``client`` / ``replay``: the wire format, a client that sends workflow
  hints, and trace replay against a running server (stdlib only; no ``sglang`` import).
See docs/sglang.md.
"""
