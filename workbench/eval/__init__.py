"""Evaluation: retrieval metrics, baselines and the harness that compares them."""

METHODS = ("generative", "bm25", "dense", "hybrid", "dense+gen", "hybrid+gen")
