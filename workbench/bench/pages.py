"""A tour of the app in a real browser: how long each page takes to become usable, and its screenshot.

One `streamlit run app.py` server on 127.0.0.1 (`bench.app.start_app`) and one headless chromium page
walk the app's pages from the sidebar twice: the first pass includes what a page loads once per
server (the generator, the BM25 and dense indexes, the stored map), the second is what a user waits
for afterwards. A page's time runs from the click in the sidebar until its own content is on the page
and the script has finished (Streamlit's "notRunning" marker); for Search it is the first query: one of
the overview's held-out example queries (another each pass), typed and run. The screenshots of the last pass are written as
`<out>/<prefix>-<page>.png` (the README's pictures come from here, not from a hand-made capture).
"""

from __future__ import annotations

import time
from pathlib import Path

from workbench.bench.app import BROWSER_ARGS, DONE, chromium, start_app

# page -> a selector only that page matches once it has drawn (Streamlit keeps the previous page's
# elements on screen until they are replaced, so a generic one, say any chart, would match too early)
READY = {  # alternatives: a page's content, or the message it shows when there is nothing to draw
    "Overview": ("What this workspace holds",),
    "Search": (),  # the result caption of the query typed
    "Compare": ("Generator A",),
    "Codebooks": ("Colour by", "no map yet", "its map is of older SIDs"),
    "Training": ("Stage 4: GRPO vs EG-GRPO",),
    "Beam width": ("The sweep's numbers", "No width sweep yet"),
    "A/B": ("held-out sessions, 95% paired bootstrap intervals", "No simulated A/B yet"),
    "SQL": ("Start from an example",),
}


def tour(workspace: Path, out: Path | None = None, prefix: str = "app", passes: int = 2, timeout_s: float = 180) -> list[dict]:
    """One row per page: page, first_s (the first pass), again_s (the last pass), and the query searched."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    proc, url = start_app(workspace)
    times: dict[str, list[float]] = {name: [] for name in READY}
    query = ""
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=BROWSER_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            t = time.perf_counter()
            page.goto(url, timeout=timeout_s * 1e3)
            _ready(page, "Overview", timeout_s)
            times["Overview"].append(time.perf_counter() - t)
            buttons = page.locator('[data-testid="stMain"] [data-testid="stButton"] button')
            try:
                buttons.first.wait_for(timeout=15_000)
                examples = [b.strip() for b in buttons.all_inner_texts()]
            except PlaywrightTimeout:  # a workspace without held-out queries
                examples = ["drill", "cordless drill"]
            for n in range(passes):
                for name in READY:
                    if n == 0 and name == "Overview":
                        continue
                    t = time.perf_counter()
                    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
                    if name == "Search":  # the first query: another held-out example each pass, so nothing is cached
                        box = page.get_by_label("Query")
                        box.wait_for(timeout=timeout_s * 1e3)
                        query = examples[n % len(examples)]
                        box.fill(query)
                        box.press("Enter")
                    _ready(page, name, timeout_s, query)
                    times[name].append(time.perf_counter() - t)
                    if out is not None and n == passes - 1:
                        out.mkdir(parents=True, exist_ok=True)
                        page.wait_for_timeout(300)  # let charts finish their transitions
                        page.screenshot(path=str(out / f"{prefix}-{name.lower().replace(' ', '-').replace('/', '')}.png"),
                                        full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return [{"case": name, "first_s": ts[0], "again_s": ts[-1], "query": query if name == "Search" else ""}  # the last query
            for name, ts in times.items()]


def _ready(page, name: str, timeout_s: float, query: str = "") -> None:
    texts = READY[name] or (f'ms for "{query}"',)
    found = page.get_by_text(texts[0], exact=False)
    for t in texts[1:]:
        found = found.or_(page.get_by_text(t, exact=False))
    found.first.wait_for(timeout=timeout_s * 1e3)
    page.wait_for_selector(DONE, timeout=timeout_s * 1e3)
    if page.locator('[data-testid="stException"]').count():
        raise RuntimeError(f"the {name} page showed an exception")
