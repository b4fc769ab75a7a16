"""A self-contained HTML report opened in a real headless Chromium through Selenium.

:func:`check_report_in_browser` is the reusable check (import it with
``from tests.test_report_browser import check_report_in_browser``): it opens the page from
``file://``, waits until it has loaded, asserts that it has its tables, that every image decoded,
and that the browser console holds no SEVERE entry, and saves a screenshot of the page.

It needs the ``selenium`` package, Chromium and ChromeDriver (Debian: ``apt-get install
chromium chromium-driver``; other paths through ``RECSHRINK_CHROMIUM`` and
``RECSHRINK_CHROMEDRIVER``). Where one is missing the test is skipped, except under ``CI=true``,
where it fails. With ``RECSHRINK_SCREENSHOT_DIR`` set, every screenshot is also copied there.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.report.plots import Figure, accuracy_vs_cost, accuracy_vs_ratio, cost_vs_ratio
from tests.helpers import synthetic_cells

CHROMIUM = Path(os.environ.get("RECSHRINK_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RECSHRINK_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
WINDOW_WIDTH = 1400
MAX_SCREENSHOT_HEIGHT = 10_000

# Waits until every <img> has settled (decoded, or failed), then calls back.
_WAIT_FOR_IMAGES = """
const done = arguments[arguments.length - 1];
Promise.allSettled(Array.from(document.images, (img) => img.decode())).then(() => done(true));
"""
_FACTS = """
const root = document.documentElement;
return {
  title: document.title,
  tables: document.querySelectorAll("table").length,
  images: Array.from(document.images, (img, index) => ({
    index: index, alt: img.alt, src: img.currentSrc.slice(0, 60), complete: img.complete,
    naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight})),
  scrollHeight: Math.max(root.scrollHeight, document.body ? document.body.scrollHeight : 0),
};
"""


def _is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_browser() -> None:
    """Skip (fail under ``CI=true``) unless selenium, Chromium and ChromeDriver are all present."""
    missing = []
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install selenium)")
    for what, path in (("Chromium", CHROMIUM), ("ChromeDriver", CHROMEDRIVER)):
        if not (path.is_file() and os.access(path, os.X_OK)):
            missing.append(f"{what} at {path}")
    if missing:
        msg = ("browser check needs " + ", ".join(missing)
               + " (Debian: apt-get install -y --no-install-recommends chromium chromium-driver)")
        if _is_ci():
            pytest.fail(msg + "; CI=true, so this is an error, not a skip", pytrace=False)
        pytest.skip(msg)


# SEVERE console entries that Chromium emits by itself, not caused by the page: (source, message
# regex). Empty on purpose: Chromium 150 (Debian 12) with the flags above logs nothing of its own for
# a self-contained file:// page (no favicon request, no network noise). An entry that names the
# page's URL is never tolerated.
TOLERATED_CONSOLE: tuple[tuple[str, str], ...] = ()


def _from_page(entry: dict[str, Any], url: str) -> bool:
    """Whether a SEVERE console entry must count against the page (see ``TOLERATED_CONSOLE``)."""
    message, source = str(entry.get("message", "")), str(entry.get("source", ""))
    if url in message:
        return True
    return not any(source == src and re.search(pattern, message) for src, pattern in TOLERATED_CONSOLE)


def check_report_in_browser(html_path: str | os.PathLike[str], screenshot_path: str | os.PathLike[str],
                            expected_tables: int | None, *, profile_dir: str | os.PathLike[str] | None = None,
                            timeout: float = 60.0) -> dict[str, Any]:
    """Open ``html_path`` in headless Chromium and check it; return the facts collected.

    Checks: at least ``expected_tables`` ``<table>`` elements (at least one when ``None``); every
    ``<img>`` complete with ``naturalWidth > 0``; no SEVERE console entry (console.error, uncaught
    exceptions, failed loads). All problems are reported together in one ``AssertionError``. The
    screenshot (``WINDOW_WIDTH`` wide, as tall as the page up to ``MAX_SCREENSHOT_HEIGHT``) is saved
    before the checks, so it exists for a failing page too, and copied to
    ``$RECSHRINK_SCREENSHOT_DIR`` when that is set. ``profile_dir``: Chromium's user data dir (a fresh
    temporary one by default).

    The returned dict has ``url``, ``title``, ``tables``, ``images`` (index, alt, src prefix,
    complete, naturalWidth, naturalHeight), ``scroll_height``, ``console`` (every entry), ``severe``,
    ``tolerated`` (SEVERE entries judged not from the page) and ``screenshot``.
    """
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    html_path = Path(html_path).resolve()
    screenshot_path = Path(screenshot_path)
    if not html_path.is_file():
        raise FileNotFoundError(html_path)
    url = html_path.as_uri()
    with tempfile.TemporaryDirectory(prefix="recshrink-chromium-") as tmp:
        profile = Path(profile_dir) if profile_dir is not None else Path(tmp)
        profile.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={WINDOW_WIDTH},900"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(timeout)
            driver.set_script_timeout(timeout)
            driver.get(url)
            WebDriverWait(driver, timeout).until(
                lambda d: d.execute_script("return document.readyState") == "complete")
            driver.execute_async_script(_WAIT_FOR_IMAGES)
            facts: dict[str, Any] = driver.execute_script(_FACTS)
            height = max(1, min(int(facts["scrollHeight"]), MAX_SCREENSHOT_HEIGHT))
            driver.set_window_size(WINDOW_WIDTH, height)
            # the window size includes the browser's own frame: grow by the difference once
            inner = int(driver.execute_script("return window.innerHeight"))
            if 0 < inner < height:
                driver.set_window_size(WINDOW_WIDTH, 2 * height - inner)
            screenshot_path.parent.mkdir(parents=True, exist_ok=True)
            if not driver.save_screenshot(str(screenshot_path)):
                raise AssertionError(f"could not save a screenshot to {screenshot_path}")
            console: list[dict[str, Any]] = driver.get_log("browser")
        finally:
            driver.quit()
    copy_dir = os.environ.get("RECSHRINK_SCREENSHOT_DIR")
    if copy_dir:
        Path(copy_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot_path, Path(copy_dir) / screenshot_path.name)

    severe = [e for e in console if e.get("level") == "SEVERE"]
    result = {
        "url": url, "title": facts["title"], "tables": int(facts["tables"]), "images": facts["images"],
        "scroll_height": int(facts["scrollHeight"]), "console": console,
        "severe": [e for e in severe if _from_page(e, url)],
        "tolerated": [e for e in severe if not _from_page(e, url)],
        "screenshot": str(screenshot_path),
    }
    problems = []
    wanted = 1 if expected_tables is None else expected_tables
    if result["tables"] < wanted:
        problems.append(f"tables: found {result['tables']} <table> elements, expected at least {wanted}")
    for img in result["images"]:
        if not (img["complete"] and img["naturalWidth"] > 0):
            problems.append(f"image #{img['index']} (alt {img['alt']!r}, src {img['src']!r}...) did not "
                            f"load: complete={img['complete']}, naturalWidth={img['naturalWidth']}")
    for entry in result["severe"]:
        problems.append(f"console SEVERE ({entry.get('source')}): {entry.get('message')}")
    if problems:
        raise AssertionError(f"browser check of {url} failed (screenshot: {screenshot_path}):\n  "
                             + "\n  ".join(problems))
    return result


# --- the tests ------------------------------------------------------------------------------------

def _page(body: str, title: str = "recshrink report check") -> str:
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>"
            '<style>body{font-family:sans-serif;margin:2em;max-width:1300px}'
            'table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}'
            'figure{display:inline-block;margin:1em}</style></head>\n'
            f"<body>\n{body}\n</body></html>\n")


def _figure_html(fig: Figure) -> str:
    return f"<figure>{fig.img_tag()}<figcaption>{html.escape(fig.caption)}</figcaption></figure>"


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small self-contained report: two tables and three figures from ``bench.report.plots``."""
    cells = synthetic_cells(datasets=("ml-100k",), names=("recall@20", "flops"))
    figures = [accuracy_vs_ratio(cells, "ml-100k", "recall@20"), cost_vs_ratio(cells, "ml-100k", "flops"),
               accuracy_vs_cost(cells, "ml-100k", "recall@20", "flops")]
    wide = cells.pivot_table(index=["method", "emb_target"], columns="name", values="value")
    spread = cells.groupby(["method", "emb_target", "name"])["value"].std().unstack("name")
    body = "\n".join([
        "<h1>recshrink: ml-100k</h1>",
        "<h2>Seed means</h2>", wide.to_html(float_format=lambda v: f"{v:.4g}"),
        "<h2>Std across seeds</h2>", spread.to_html(float_format=lambda v: f"{v:.3g}", na_rep="-"),
        "<h2>Figures</h2>", *(_figure_html(f) for f in figures),
    ])
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(_page(body), encoding="utf-8")
    return path


def test_report_page_in_browser(report_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report_plots_page.png"
    facts = check_report_in_browser(report_page, shot, expected_tables=2, profile_dir=tmp_path / "profile")
    assert facts["tables"] == 2
    assert len(facts["images"]) == 3
    assert all(img["naturalWidth"] == 640 and img["naturalHeight"] == 400 for img in facts["images"])
    assert facts["severe"] == [] and facts["tolerated"] == []
    assert facts["title"] == "recshrink report check"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert facts["screenshot"] == str(shot)


def test_checker_catches_missing_tables(report_page: Path, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"tables: found 2 <table> elements, expected at least 3"):
        check_report_in_browser(report_page, tmp_path / "tables.png", expected_tables=3,
                                profile_dir=tmp_path / "profile")


def test_checker_catches_broken_image(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(_page(pd.DataFrame({"a": [1]}).to_html()
                          + '<img alt="broken" src="data:image/png;base64,AAAA">'), encoding="utf-8")
    with pytest.raises(AssertionError, match=r"image #0 \(alt 'broken'") as err:
        check_report_in_browser(page, tmp_path / "broken.png", expected_tables=1,
                                profile_dir=tmp_path / "profile")
    assert "console" not in str(err.value) and "tables:" not in str(err.value)
    assert (tmp_path / "broken.png").is_file()  # the screenshot is kept for a failing page


@pytest.mark.parametrize("script", ['console.error("boom")', 'throw new Error("kaboom")'],
                         ids=["console-error", "uncaught-exception"])
def test_checker_catches_console_errors(tmp_path: Path, script: str) -> None:
    page = tmp_path / "console.html"
    page.write_text(_page(f"<table><tr><td>1</td></tr></table><script>{script}</script>"), encoding="utf-8")
    with pytest.raises(AssertionError, match=r"console SEVERE") as err:
        check_report_in_browser(page, tmp_path / "console.png", expected_tables=None,
                                profile_dir=tmp_path / "profile")
    assert ("boom" if "boom" in script else "kaboom") in str(err.value)
    assert "image #" not in str(err.value)


def test_missing_browser_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="Chromium at"):
        require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_browser()


def test_generated_report_in_browser(tmp_path: Path) -> None:
    """The real report (``build_report`` on a generated store): every table, every figure, no errors."""
    from bench.report import build_report
    from bench.store import ResultStore
    from tests.helpers import cells_plan, result

    store = tmp_path / "results.sqlite"
    with ResultStore(store) as s:
        s.start_run("gen", 'name = "gen"\n', "recshrink run gen.toml", {})
        for m, t, seed in cells_plan():
            s.put(result(m, t, seed))
    paths = build_report([store], tmp_path / "report", latex=True)
    facts = check_report_in_browser(paths["html"], tmp_path / "report.png", expected_tables=4)
    assert facts["tables"] == 4
    assert len(facts["images"]) == 8  # 2 metrics and 2 costs (flops, bits) vs ratio, 2 x 2 metric vs cost
    assert (tmp_path / "report.png").stat().st_size > 10_000
