"""Evaluation: baselines (BM25, dense, fusion, supplement), the harness that compares them, and the beam-width choice."""

