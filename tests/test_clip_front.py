"""clip-retrieval's own web front end (``front/build`` of the clip-retrieval 2.45.0 package) served by
``kontrast serve --clip-front`` and driven in headless Chromium: a text query shows the kontrast index's images.

Browser requirements as in test_browser.py (fails under ``CI=true`` when missing, skips elsewhere); the
clip-retrieval package is required (installed ``--no-deps`` by .ci/run). With ``KONTRAST_SCREENSHOT`` set, the
page is saved to docs/clip-retrieval-front.png (the README shows it).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi.testclient import TestClient
from test_browser import CHROMEDRIVER, CHROMIUM, FLAGS, _require_browser, _wait
from test_server import build_small_index
from test_server_live import live_server

from kontrast.search.clip_retrieval_api import front_build_dir
from kontrast.search.query import Searcher
from kontrast.search.server import create_app

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_front_files_and_config(tmp_path, data_dir):
    folder, _ = build_small_index(tmp_path, data_dir / "emoji_sample", "default", n=4)
    front = front_build_dir()  # found through the package's file list, not a fixed path
    assert (front / "index.html").is_file()
    app = create_app({"emoji": Searcher.open(str(folder))}, clip_front=str(front), auth_token="k" * 20)
    with TestClient(app, base_url="http://127.0.0.1:8123") as c:
        assert c.get("/clip-front/").status_code == 401  # the guard covers the front end's files too
        page = c.get("/clip-front/?token=" + "k" * 20)
        assert page.status_code == 200 and "<clip-front>" in page.text
        config = c.get("/clip-front/config.json").json()
        assert config == {"defaultBackend": "http://127.0.0.1:8123", "defaultIndex": "emoji", "urlColumn": "url"}
        assert c.get("/clip-front/assets/search.png").status_code == 200
        assert c.get("/clip-front", follow_redirects=False).status_code in (307, 308)
    with TestClient(create_app(Searcher.open(str(folder))), base_url="http://127.0.0.1") as c:
        assert c.get("/clip-front/").status_code == 404  # not served unless asked


def test_clip_front_in_headless_chromium(tmp_path, data_dir):
    webdriver = _require_browser()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    folder, rows = build_small_index(tmp_path / "data", data_dir / "emoji_sample", "default", n=20)
    app = create_app({"emoji": Searcher.open(str(folder))}, clip_front=str(front_build_dir()))
    with TestClient(app, base_url="http://127.0.0.1") as c:  # what the page should show: the API's answer to the front end's default query
        expected = c.post("/knn-service", json={"text": "an emoji of a flag", "modality": "image", "num_images": 40,
                                                "indice_name": "emoji", "deduplicate": True}).json()
    assert 20 <= len(expected) <= 23  # 20 CSV images + 3 shard members, near-duplicates (cosine >= 0.94) merged
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    with live_server(app) as url:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")),
                                  options=options)
        try:
            driver.set_page_load_timeout(60)
            driver.get(url + "/clip-front/")
            root = _wait(lambda: driver.execute_script("return document.querySelector('clip-front').shadowRoot"),
                         what="the clip-front element")
            box = _wait(lambda: root.find_elements(By.CSS_SELECTOR, "#searchBar"), what="the search bar")[0]
            _wait(lambda: driver.execute_script(
                "return document.querySelector('clip-front').currentIndex === 'emoji'"), what="the index list")
            box.send_keys("an emoji of a flag", Keys.ENTER)

            def pictures_loaded():
                return driver.execute_script(
                    "const imgs = [...document.querySelector('clip-front').shadowRoot.querySelectorAll('img.pic')];"
                    "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : 0;")

            count = _wait(pictures_loaded, what="result pictures")
            assert count == len(expected)  # every result of the API has its image inline
            captions = [e.text for e in root.find_elements(By.CSS_SELECTOR, "figcaption")]
            known = {row["caption"][:50] for row in rows}
            assert sum(any(c.startswith(k[:40]) for k in known) for c in captions) >= 15, captions
            if os.environ.get("KONTRAST_SCREENSHOT"):
                DOCS.mkdir(exist_ok=True)
                driver.save_screenshot(str(DOCS / "clip-retrieval-front.png"))
            assert "query=an+emoji+of+a+flag" in driver.current_url and "index=emoji" in driver.current_url
        finally:
            driver.quit()
