"""The search page in a real headless Chromium (Debian's `chromium` and `chromium-driver`).

The page is served by the real app over HTTP, on artifacts indexed by the real indexer
(the same six artifacts as tests/e2e/test_search_extension.py). The test types a query
with the keyboard, reads what the page shows, picks a facet with the keyboard, and takes
a screenshot (docs/search-page.png with `SEARCH_PAGE_SCREENSHOT=docs/search-page.png`).
The app is the deployed one (`create_api`: with the saved-search routes), so the page's
saved searches are checked through the API as well.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from elasticsearch import AsyncElasticsearch
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from artifact_search.api import create_api
from indexer.local import LocalPipeline
from services.config import ElasticsearchSettings, QuerySettings
from services.es.admin import drop_indices, ensure_indices
from services.es.indices import IndexNames
from tests.e2e.test_search_extension import ARTIFACTS as SOURCE
from tests.e2e.test_search_extension import R1, _parents, _records
from tests.serving import ServerThread

UI = "http://prefect-ui.example:4200"
HOOKS = "hooks.example"
"""The only host saved searches may send webhooks to (ALERTS_WEBHOOK_ALLOWED_HOSTS)."""
# docs/search-page.png was made with SEARCH_PAGE_SCREENSHOT=docs/search-page.png
SCREENSHOT_ENV = "SEARCH_PAGE_SCREENSHOT"


@pytest.fixture(scope="module")
async def page_url(elasticsearch_url: str) -> AsyncIterator[str]:
    names = IndexNames(f"page-{uuid.uuid4().hex[:8]}-")
    es = AsyncElasticsearch(elasticsearch_url, request_timeout=60)
    await ensure_indices(es, names)
    try:
        await LocalPipeline(es, names).load(_parents() + _records(SOURCE), batch=100)
        await es.indices.refresh(index=",".join(names.all_aliases()))
        app = create_api(
            QuerySettings(prefect_ui_url=UI + "/", webhook_allowed_hosts=HOOKS),
            ElasticsearchSettings(url=elasticsearch_url, index_prefix=names.prefix),
        )
        with ServerThread(app) as server:
            yield f"{server.base_url}/ext/v1/search"
    finally:
        await drop_indices(es, names)
        await es.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    assert Path(binary).exists() and Path(driver_path).exists(), (
        "install Debian's chromium and chromium-driver packages (.ci/run does)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_status(driver: WebDriver, text: str) -> None:
    WebDriverWait(driver, 20).until(
        lambda d: text in d.find_element(By.ID, "status").text,
        f"status never said {text!r}",
    )


def _keys(driver: WebDriver) -> list[str]:
    return [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#results article h2")]


def _wait_keys(driver: WebDriver, want: list[str], message: str) -> None:
    """Until the results' keys start with `want` (read again when redrawn while read)."""
    WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: _keys(d)[: len(want)] == want, message
    )


def test_typing_a_query_shows_highlighted_results_facets_and_previews(
    page_url: str, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(page_url)
    _wait_status(browser, "6 results")  # the page lists everything at first
    box = browser.find_element(By.ID, "q")
    label = browser.find_element(By.CSS_SELECTOR, "label[for=q]")
    assert label.get_attribute("textContent") == "Search artifacts"
    box.send_keys("revenue", Keys.ENTER)
    _wait_status(browser, "3 results")
    assert sorted(_keys(browser)) == ["notes", "sales-report", "sales-report"]
    marks = {m.text.lower() for m in browser.find_elements(By.CSS_SELECTOR, "article mark")}
    assert marks == {"revenue"}
    links = {a.get_attribute("href") for a in browser.find_elements(By.LINK_TEXT, "flow run")}
    assert links == {f"{UI}/runs/flow-run/{R1}"}
    legends = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "#facets legend")]
    assert legends[:2] == ["Type", "Flow"]

    # a table artifact: its rows are shown as a table
    box.clear()
    box.send_keys("data:emea", Keys.ENTER)
    _wait_status(browser, "2 results")
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "article table td")]
    assert "apac" in cells and "0.88" in cells
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "search-page.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # a facet picked with the keyboard narrows the results, and counts stay multi-select
    box.clear()
    box.send_keys("revenue OR dashboard", Keys.ENTER)
    _wait_status(browser, "4 results")
    link_box = browser.find_element(By.CSS_SELECTOR, "input[name=type][value=link]")
    link_box.send_keys(Keys.SPACE)
    _wait_status(browser, "1 result")
    assert _keys(browser) == ["(no key)"]
    type_facet = browser.find_element(By.CSS_SELECTOR, "#facets fieldset")
    counts = {
        label.find_element(By.TAG_NAME, "input").get_attribute("value"): label.find_element(
            By.CLASS_NAME, "count"
        ).text
        for label in type_facet.find_elements(By.TAG_NAME, "label")
    }
    assert counts == {"markdown": "3", "link": "1"}  # its own selection does not narrow it


def test_typed_conditions_date_ranges_and_the_histogram(page_url: str, browser: WebDriver) -> None:
    browser.get(page_url)
    _wait_status(browser, "6 results")
    box = browser.find_element(By.ID, "q")
    box.send_keys("metadata.threshold >= 0.9", Keys.ENTER)  # the string "0.9" is a number
    _wait_status(browser, "1 result")
    assert _keys(browser) == ["model-metrics"]
    box.clear()
    box.send_keys("metadata.threshold > 0.9 OR data >= 40", Keys.ENTER)
    _wait_status(browser, "1 result")
    assert _keys(browser) == ["progress-x"]
    box.clear()
    box.send_keys("metadata.threshold >= abc", Keys.ENTER)
    _wait_status(browser, "Error 422")
    assert "compares numbers or timestamps" in browser.find_element(By.ID, "status").text

    # a created range typed into the date inputs (labelled), sent with the query
    box.clear()
    for field, label, day in (
        ("created-from", "Created from", "03012024"),
        ("created-to", "to", "04012024"),
    ):
        assert browser.find_element(By.CSS_SELECTOR, f"label[for={field}]").text.startswith(label)
        browser.find_element(By.ID, field).send_keys(day)
    assert browser.find_element(By.ID, "created-from").get_attribute("value") == "2024-03-01"
    assert browser.find_element(By.ID, "created-to").get_attribute("value") == "2024-04-01"
    box.send_keys(Keys.ENTER)
    _wait_status(browser, "2 results")  # a3 (March 1st) and a4 (April 1st, the last day)
    assert sorted(_keys(browser)) == ["(no key)", "model-metrics"]

    # the histogram width chosen with the keyboard; its buckets are shown
    def buckets() -> list[str]:
        try:
            return [li.text for li in browser.find_elements(By.CSS_SELECTOR, "ol.histogram li")]
        except StaleElementReferenceException:  # redrawn while read: read it again
            return []

    WebDriverWait(browser, 20).until(lambda d: buckets() == ["2024-03-01\n1", "2024-04-01\n1"])
    assert browser.find_element(By.CSS_SELECTOR, "label[for=histogram]").text == (
        "Created histogram by"
    )
    browser.find_element(By.ID, "histogram").send_keys("Y")  # Year
    WebDriverWait(browser, 20).until(
        lambda d: buckets() == ["2024\n2"], "the year histogram never showed"
    )
    # an hour histogram over three months has too many buckets (2,208 > 2,000): the page
    # widens it to days instead of showing no results
    to = browser.find_element(By.ID, "created-to")
    to.send_keys("05312024", Keys.ENTER)
    _wait_status(browser, "3 results")  # a3, a4, a5
    browser.find_element(By.ID, "histogram").send_keys("H")  # Hour
    _wait_status(browser, "histogram widened to day")
    assert browser.find_element(By.ID, "histogram").get_attribute("value") == "day"
    assert "3 results" in browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "created-from").clear()
    browser.find_element(By.ID, "created-to").clear()
    box.send_keys(Keys.ENTER)
    _wait_status(browser, "6 results")
    months = [f"2024-0{m}-01\n1" for m in range(1, 7)]  # day buckets: the widened width
    WebDriverWait(browser, 20).until(lambda d: buckets() == months, "the day buckets")


def test_errors_are_shown(page_url: str, browser: WebDriver) -> None:
    browser.get(page_url)
    _wait_status(browser, "results")
    box = browser.find_element(By.ID, "q")
    box.send_keys("live:false", Keys.ENTER)
    _wait_status(browser, "Error 422")
    assert "Searchable fields" in browser.find_element(By.ID, "status").text


def test_updated_range_and_sort_order_chosen_with_the_keyboard(
    page_url: str, browser: WebDriver
) -> None:
    browser.get(page_url)
    _wait_status(browser, "6 results")
    assert _keys(browser)[0] == "notes"  # without words: newest created first (June)
    assert browser.find_element(By.CSS_SELECTOR, "label[for=sort]").text == "Sort by"
    browser.find_element(By.ID, "sort").send_keys("Key A")  # type-ahead: "Key A-Z"
    want = ["model-metrics", "notes", "progress-x", "sales-report", "sales-report", "(no key)"]
    _wait_keys(browser, want, "the key order never showed")
    Select(browser.find_element(By.ID, "sort")).select_by_visible_text("Oldest created")
    _wait_keys(browser, ["sales-report"] * 2, "the oldest never came first")

    # an updated range from the date inputs (labelled); every artifact of this dataset was
    # last updated when it was created, one per month from January to June 2024
    for field, label, day in (
        ("updated-from", "Updated from", "02152024"),
        ("updated-to", "to", "05012024"),
    ):
        assert browser.find_element(By.CSS_SELECTOR, f"label[for={field}]").text.startswith(label)
        browser.find_element(By.ID, field).send_keys(day)
    browser.find_element(By.ID, "q").send_keys(Keys.ENTER)
    _wait_status(browser, "3 results")  # March, April, May (May 1st: the last day counts)
    assert _keys(browser) == ["model-metrics", "(no key)", "progress-x"]  # still oldest first


def _saved(page_url: str) -> list[dict[str, object]]:
    """The saved searches, read through the API (not the page)."""
    answer = httpx.get(page_url.removesuffix("/search") + "/saved-searches", timeout=30)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, object]] = answer.json()["saved_searches"]
    return found


def _save_status(driver: WebDriver, text: str) -> None:
    WebDriverWait(driver, 20).until(
        lambda d: text in d.find_element(By.ID, "save-status").text,
        f"the save status never said {text!r}",
    )


def _saved_names(driver: WebDriver) -> list[str]:
    return [
        b.text for b in driver.find_elements(By.CSS_SELECTOR, "#saved-list button:not(.delete)")
    ]


def test_a_search_saved_listed_loaded_updated_and_deleted_from_the_page(
    page_url: str, browser: WebDriver
) -> None:
    browser.get(page_url)
    _wait_status(browser, "6 results")
    assert browser.find_element(By.ID, "saved-title").text == "Saved searches"
    assert (
        browser.find_element(By.CSS_SELECTOR, "label[for=save-name]").text == "Name of this search"
    )
    box = browser.find_element(By.ID, "q")

    # a query the API refuses is not saved, and the page says why
    box.send_keys("live:false", Keys.ENTER)
    _wait_status(browser, "Error 422")
    browser.find_element(By.ID, "save-name").send_keys("bad", Keys.ENTER)
    _save_status(browser, "Error 422")
    assert _saved(page_url) == []

    # the current query and its updated range saved under a name typed into the form
    box.clear()
    box.send_keys("revenue")
    browser.find_element(By.ID, "updated-from").send_keys("01012024")
    box.send_keys(Keys.ENTER)
    _wait_status(browser, "3 results")
    name = browser.find_element(By.ID, "save-name")
    name.clear()
    # a webhook to a host the API does not allow: refused with the host named, not saved
    webhook = browser.find_element(By.ID, "save-webhook")
    label = browser.find_element(By.CSS_SELECTOR, "label[for=save-webhook]").text
    assert label.startswith("Webhook URL")
    webhook.send_keys("http://elsewhere.example/hook")
    name.send_keys("Revenue this year", Keys.ENTER)
    _save_status(browser, "Error 422")
    assert "elsewhere.example" in browser.find_element(By.ID, "save-status").text
    assert _saved(page_url) == []
    webhook.clear()
    webhook.send_keys(f"http://{HOOKS}/alerts")
    name.send_keys(Keys.ENTER)
    _save_status(browser, "Saved “Revenue this year”")
    WebDriverWait(browser, 20).until(lambda d: _saved_names(d) == ["Revenue this year"])
    (stored,) = _saved(page_url)
    search = stored["search"]
    assert isinstance(search, dict)
    assert stored["name"] == "Revenue this year" and search["q"] == "revenue"
    assert search["updated"] == {"after": "2024-01-01T00:00:00Z", "before": None}
    assert stored["notify_existing"] is False
    assert stored["webhook"] == {"url": f"http://{HOOKS}/alerts"}

    # a new search, then the saved one loaded back from the list with the keyboard
    box.clear()
    updated_from = browser.find_element(By.ID, "updated-from")
    updated_from.clear()
    assert updated_from.get_attribute("value") == ""
    box.send_keys("data:emea", Keys.ENTER)
    _wait_status(browser, "2 results")
    browser.find_element(By.CSS_SELECTOR, "#saved-list button:not(.delete)").send_keys(Keys.ENTER)
    _save_status(browser, "Showing saved search “Revenue this year”")
    _wait_status(browser, "3 results")
    assert box.get_attribute("value") == "revenue"
    assert browser.find_element(By.ID, "updated-from").get_attribute("value") == "2024-01-01"
    assert name.get_attribute("value") == "Revenue this year"
    assert webhook.get_attribute("value") == f"http://{HOOKS}/alerts"

    # edited in place: another query and name, replaced under the same id
    box.clear()
    box.send_keys("data:emea", Keys.ENTER)
    _wait_status(browser, "2 results")
    name.clear()
    name.send_keys("EMEA revenue")
    update = browser.find_element(By.ID, "update-saved")
    assert update.is_displayed() and update.text == "Update “Revenue this year”"
    update.send_keys(Keys.ENTER)
    _save_status(browser, "Updated “EMEA revenue”")
    WebDriverWait(browser, 20).until(lambda d: _saved_names(d) == ["EMEA revenue"])
    (replaced,) = _saved(page_url)
    assert replaced["id"] == stored["id"] and replaced["name"] == "EMEA revenue"
    assert isinstance(replaced["search"], dict) and replaced["search"]["q"] == "data:emea"
    assert replaced["webhook"] == {"url": f"http://{HOOKS}/alerts"}

    # deleted from the list: gone from the page and from the API, nothing left to update
    delete = browser.find_element(By.CSS_SELECTOR, "button[aria-label='Delete EMEA revenue']")
    delete.send_keys(Keys.ENTER)
    _save_status(browser, "Deleted “EMEA revenue”")
    WebDriverWait(browser, 20).until(lambda d: _saved_names(d) == [])
    assert _saved(page_url) == []
    assert not browser.find_element(By.ID, "update-saved").is_displayed()
