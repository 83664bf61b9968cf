"""A tour of the app in a real browser: how long each page takes to become usable, and its screenshot.

One `streamlit run app.py` server on 127.0.0.1 (`bench.app.start_app`) and one headless chromium page
walk the app's pages from the sidebar twice: the first pass includes what a page loads once per
server (the generator, the BM25 and dense indexes, the stored map), the second is what a user waits
for afterwards. A page's time runs from the click in the sidebar until its own content is on the page
and the script has finished (Streamlit's "notRunning" marker); for Search it is the first query: one of
the overview's example test queries (another each pass), typed and run. Readiness is checked
every animation frame in the page (Playwright's locator waits back off to every 500 ms). The screenshots of the last pass are written as
`<out>/<prefix>-<page>.png` (the README's and the docs' pictures come from here, not from a hand-made capture).
"""

from __future__ import annotations

import time
from pathlib import Path

from workbench.bench import launch
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
    "A/B": ("test sessions; 95% paired intervals", "No simulated A/B yet"),
    "SQL": ("Start from an example",),
}


def tour(workspace: Path, out: Path | None = None, prefix: str = "app", passes: int = 2, timeout_s: float = 180,
         dwell_s: float = 0.0) -> list[dict]:
    """One row per page: page, first_s (the first pass), again_s (the last pass), and the query searched.
    `dwell_s`: seconds spent on the overview before the first click, as a user reading it would."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    if dwell_s < 0:
        raise ValueError(f"dwell_s must be >= 0, got {dwell_s}")
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
            if passes == 1:  # the last pass is this one
                _shot(page, out, prefix, "Overview")
            buttons = page.locator('[data-testid="stMain"] [data-testid="stButton"] button')
            try:
                buttons.first.wait_for(timeout=15_000)
                examples = [b.strip() for b in buttons.all_inner_texts()]
            except PlaywrightTimeout:  # a workspace without test queries
                examples = ["drill", "cordless drill"]
            page.wait_for_timeout(dwell_s * 1e3)
            for n in range(passes):
                for name in READY:
                    if n == 0 and name == "Overview":
                        continue
                    t = time.perf_counter()
                    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
                    if name == "Search":  # the first query: another test example each pass, so nothing is cached
                        page.wait_for_function(_BOX_JS, arg=DONE, polling="raf", timeout=timeout_s * 1e3)
                        box = page.get_by_label("Query")
                        query = examples[n % len(examples)]
                        box.fill(query)
                        box.press("Enter")
                    _ready(page, name, timeout_s, query)
                    times[name].append(time.perf_counter() - t)
                    if n == passes - 1:
                        _shot(page, out, prefix, name)
            browser.close()
    finally:
        launch.stop(proc, timeout=30)
    return [{"case": name, "first_s": ts[0], "again_s": ts[-1], "query": query if name == "Search" else ""}  # the last query
            for name, ts in times.items()]


def _shot(page, out: Path | None, prefix: str, name: str) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(300)  # let charts finish their transitions
        page.screenshot(path=str(out / shot_name(prefix, name)), full_page=True)


def shot_name(prefix: str, page: str) -> str:
    """The screenshot's file name: `app`, `Beam width` -> app-beam-width.png."""
    return f"{prefix}-{page.lower().replace(' ', '-').replace('/', '')}.png"


def _ready(page, name: str, timeout_s: float, query: str = "") -> None:
    """Wait, checking every animation frame, until one of the page's texts is in the main area and the script
    has finished. (Playwright's own locator waits back off to one check per 500 ms, which added up to a
    second to a page's time.)"""
    texts = list(READY[name] or (f'ms for "{query}"',))
    page.wait_for_function(_READY_JS, arg={"texts": texts, "done": DONE}, polling="raf", timeout=timeout_s * 1e3)
    if page.locator('[data-testid="stException"]').count():
        raise RuntimeError(f"the {name} page showed an exception")


_BOX_JS = """done => !!document.querySelector('[data-testid="stMain"] input[aria-label="Query"]') && !!document.querySelector(done)"""
_READY_JS = """({texts, done}) => {
    const main = document.querySelector('[data-testid="stMain"]');
    return !!main && !!document.querySelector(done) && texts.some(t => main.textContent.includes(t));
}"""
