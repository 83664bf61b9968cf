"""Benchmark tables: print rows as a table and record every number in the logbook's `bench` table.

Speed and memory are measured by benchmarks (`workbench.bench`, the width sweep in `workbench.eval.width`),
never in timed unit tests: compare ratios from one run. `device_name` labels each row with the hardware.
"""

from __future__ import annotations

import platform

import pandas as pd
import torch


def device_name(device: str = "cpu") -> str:
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def report(bench: str, rows: list[dict], run=None, case_key: str = "case", units: dict[str, str] | None = None,
           params: dict | None = None, device: str | None = None) -> pd.DataFrame:
    """Print `rows` as a table and log every numeric cell to `run` (a logbook Run) if given."""
    df = pd.DataFrame(rows)
    print(f"\n{bench}\n" + (df.to_string(index=False, float_format=lambda v: f"{v:,.3f}") if rows else "(no rows)"))
    if run is not None:
        for r in rows:
            for k, v in r.items():
                if k != case_key and isinstance(v, int | float) and not isinstance(v, bool):
                    run.log_bench(bench, k, v, unit=(units or {}).get(k), case_name=str(r.get(case_key)),
                                  params=params, device=device)
    return df
