"""Load on the app: N browser sessions searching at once for a bounded time (`workbench bench app`).

One `streamlit run app.py` server on 127.0.0.1; one headless chromium (Debian's, through Playwright)
with N pages, each its own Streamlit session, typing queries drawn from the workspace's queries in a
loop until time is up. Per search: the time from pressing Enter until the script has finished and
the SID paths are on the page. Errors are searches that raised, timed out or showed an exception.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from workbench.bench import launch
from workbench.workspace import Workspace

APP = Path(__file__).resolve().parent.parent.parent / "app.py"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
DONE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("chromium is not installed: apt-get install -y --no-install-recommends chromium")
    return path


def start_app(workspace: Path, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free port of 127.0.0.1 for `workspace`, once it answers its health
    check (`launch.start`: the error names what the server printed); `launch.stop` stops it."""
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(workspace)}
    proc, url, log = launch.start(lambda port: [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless=true",
                                              "--server.address=127.0.0.1", f"--server.port={port}",
                                              "--server.fileWatcherType=none", "--browser.gatherUsageStats=false"],
                                "/_stcore/health", env=env, timeout=timeout)
    log.unlink()  # the server keeps writing to the open file; nothing is left behind
    return proc, url


async def _session(browser, url: str, queries: list[str], until: float, seed: int, out: list, errors: list) -> None:
    rng = np.random.default_rng(seed)
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        await page.goto(url, timeout=120_000)
        await page.wait_for_selector(DONE, timeout=120_000)
        await page.locator('[data-testid="stSidebar"]').get_by_text("Search", exact=True).click()  # from the overview
        box = page.get_by_label("Query")
        await box.wait_for(timeout=120_000)
        while time.monotonic() < until:
            q = f"{queries[rng.integers(len(queries))]} {rng.integers(1000)}"  # never the same text twice
            t = time.perf_counter()
            try:
                await box.fill(q)
                await box.press("Enter")
                await page.get_by_text(f'for "{q}"').wait_for(timeout=60_000)  # this search's result caption
                if await page.locator('[data-testid="stException"]').count():
                    errors.append(f"exception shown for {q!r}")
                else:
                    out.append(time.perf_counter() - t)
            except Exception as e:  # a timeout or a closed page: count it, keep going
                errors.append(f"{type(e).__name__} for {q!r}")
    finally:
        await page.close()


def load(workspace: Path, sessions: int = 20, seconds: float = 60, seed: int = 0) -> dict:
    """Run the load; returns searches, errors, p50/p95/max seconds, searches per second."""
    from playwright.async_api import async_playwright

    queries = Workspace(workspace).table("queries")["query"].astype(str).tolist()
    proc, url = start_app(workspace)
    latencies: list[float] = []
    errors: list[str] = []

    async def main():
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium(), args=BROWSER_ARGS)
            until = time.monotonic() + seconds
            await asyncio.gather(*[_session(browser, url, queries, until, seed + i, latencies, errors)
                                   for i in range(sessions)])
            await browser.close()

    t0 = time.perf_counter()
    try:
        asyncio.run(main())
    finally:
        launch.stop(proc, timeout=30)
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"case": f"{sessions} sessions, {seconds:g} s", "sessions": sessions, "searches": len(latencies),
            "errors": len(errors), "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "max_s": float(np.max(lat)), "searches_per_s": len(latencies) / wall, "first_errors": "; ".join(errors[:3])}
