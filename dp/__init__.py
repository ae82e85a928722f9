"""Differential privacy for silos: DP-SGD training, privacy accounting, budgets, attestations."""
