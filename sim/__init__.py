"""SimPy discrete-event backend: drives kvflow.engine.Engine with a cost model and PCIe channels.

Entry point ``kvflow-sim`` (sim/cli.py, Hydra, conf/config.yaml); ``sim.runner.simulate`` runs one
configuration without Hydra. Speedup tables and plots of runs: ``kvflow-report`` (analysis/).
"""
