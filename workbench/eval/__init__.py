"""Evaluation: retrieval metrics, baselines and the harness that compares them."""
