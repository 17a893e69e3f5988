"""End-to-end: the search page in headless Chromium against a real uvicorn server on 127.0.0.1.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``) and
the ``selenium`` package (``pip install 'kontrast[test]'``). When they are missing the test FAILS under
``CI=true`` and is skipped otherwise. Set ``KONTRAST_SCREENSHOT=FILE`` to keep a copy of the screenshot.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
from test_server import build_small_index
from test_server_live import live_server

from kontrast.search.query import Searcher
from kontrast.search.server import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--window-size=1280,900"]


def _require_browser():
    """Selenium's webdriver module, or fail (CI) / skip (elsewhere) with the reason."""
    problems = [f"{p} not found" for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        problems.append("the selenium package is not installed (pip install 'kontrast[test]')")
    if problems:
        reason = "browser test needs apt packages chromium + chromium-driver and pip selenium: " + "; ".join(problems)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return webdriver


def _wait(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_search_page_in_headless_chromium(tmp_path, data_dir, fixtures_dir):
    webdriver = _require_browser()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    folder, rows = build_small_index(tmp_path / "data", data_dir / "emoji_sample", str(fixtures_dir / "openai_vit.pt"),
                                     n=20)
    app = create_app(Searcher.open(str(folder)))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with live_server(app) as url:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                                  options=options)
        try:
            driver.set_page_load_timeout(60)
            driver.get(url + "/")
            _wait(lambda: "items" in driver.find_element(By.ID, "stats").text, what="index stats")
            box = driver.find_element(By.ID, "q")
            box.send_keys("an emoji of a flag", Keys.ENTER)

            def thumbnails_loaded():
                return driver.execute_script(
                    "const imgs = [...document.querySelectorAll('#results .result img')];"
                    "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;")

            count = _wait(thumbnails_loaded, what="thumbnails")
            assert count == 23  # 20 CSV images + 3 shard members, k=24 by default
            scores = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .result .score")]
            assert scores[0].startswith("#1") and "results in" in driver.find_element(By.ID, "status").text
            shot = tmp_path / "search-page.png"
            driver.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"

            driver.find_elements(By.CSS_SELECTOR, "#results .result")[0].click()
            details = driver.find_element(By.ID, "details")
            _wait(details.is_displayed, what="details panel")
            assert "score" in details.text and str(tmp_path / "data") in details.text
            _wait(lambda: driver.execute_script("return document.getElementById('detail-image').naturalWidth > 0"),
                  what="detail image")
            # the "where" view: a heatmap of the query text over the same image, and back
            where = driver.find_element(By.ID, "detail-where")
            assert where.is_displayed() and "an emoji of a flag" in where.text
            where.click()
            _wait(lambda: driver.execute_script(
                "const i = document.getElementById('detail-image');"
                "return i.src.includes('/locate/') && i.complete && i.naturalWidth > 0;"), what="where overlay")
            assert "q=an+emoji+of+a+flag" in driver.find_element(By.ID, "detail-image").get_attribute("src")
            if os.environ.get("KONTRAST_SCREENSHOT"):
                driver.save_screenshot(os.environ["KONTRAST_SCREENSHOT"])
            where.click()
            _wait(lambda: "/thumb/" in driver.find_element(By.ID, "detail-image").get_attribute("src"), what="thumb back")
            driver.find_element(By.ID, "close-details").click()
            _wait(lambda: not details.is_displayed(), what="details closed")

            # image query through the file input (the drop zone's fallback)
            query = tmp_path / "data" / "images" / rows[4]["filepath"]
            file_input = driver.find_element(By.ID, "file")
            driver.execute_script("arguments[0].hidden = false;", file_input)
            driver.find_element(By.ID, "q").clear()
            file_input.send_keys(str(query))
            _wait(lambda: driver.execute_script(
                "const c = document.querySelector('#results .result .name');"
                f"return c && c.title === {str(query)!r};"), what="image search results")

            origins = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin);")
            assert origins and set(origins) <= {url, "null"}, origins  # nothing fetched from elsewhere
            severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not severe, severe
        finally:
            driver.quit()
