"""Hydra configuration groups (hardware, model, workload, policy, experiment), installed as package data."""
