"""Benchmarks: each prints a table and records its figures in the workspace logbook's `bench` table
(through `workbench.report`). Speed and memory are measured here, never in timed unit tests: compare
ratios from one run.
"""
