"""Experiments over many runs: the runs table and diff (runs.py), hyperparameter search (tune.py)."""
