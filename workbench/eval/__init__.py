"""Evaluation: baselines (BM25, dense, fusion, supplement), the harness that compares them, and the beam-width choice."""

METHODS = ("generative", "oracle-sids", "bm25", "dense", "hybrid", "bm25+gen", "dense+gen", "hybrid+gen")
