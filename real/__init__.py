"""Real backend: the kvflow core driven in wall-clock time with a torch model, per-node KV on the
GPU and in pinned CPU memory, copies on their own CUDA streams; calibration of the simulator's
cost model and sim-vs-real validation (``kvflow-real``; docs/real_backend.md)."""
