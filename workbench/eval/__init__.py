"""Evaluation: baselines (BM25, dense, fusion, supplement), the harness that compares them, and the beam-width choice."""

METHODS = ("generative", "oracle-sids", "bm25", "dense", "hybrid", "dense+gen", "hybrid+gen")
