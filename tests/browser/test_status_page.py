"""The status page (`GET /ui`) in a real headless Chromium, against a real daemon whose workers
are fake vLLM servers: it lists the models, loads one from its button, shows a request sent
from elsewhere, and fits a phone-width window."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.browser.helpers import NARROW, WIDE, browser, daemon, missing, model_state, wait_for
from tests.conftest import LONG_LIVED, assert_no_leftovers
from tests.daemon import Daemon

ADMIN = "admin-key-for-the-page-0123456789"

why = missing()
if why is not None:
    pytest.skip(why, allow_module_level=True)

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    started = time.time() - 1
    with daemon(tmp_path_factory.mktemp("ui")) as running:
        LONG_LIVED.add(running.proc.pid)
        try:
            yield running
        finally:
            LONG_LIVED.discard(running.proc.pid)
    assert_no_leftovers(started)


@pytest.fixture(scope="module")
def page(served: Daemon) -> Iterator[WebDriver]:
    with browser() as driver:
        driver.get(served.url + "/ui")
        wait_for(driver, "document.getElementById('connection').dataset.state === 'live'")
        yield driver


def test_the_page_lists_the_configured_models(page: WebDriver) -> None:
    names = wait_for(
        page, "[...document.querySelectorAll('.model')].map(m => m.dataset.name).join(',')"
    )
    assert names == "tiny,tiny-embed"
    assert wait_for(page, model_state("tiny")) == "unloaded"
    assert wait_for(page, "document.querySelectorAll('.device').length > 0")


def test_a_load_from_its_button_shows_the_model_loaded(page: WebDriver, served: Daemon) -> None:
    page.execute_script("document.querySelector('.model[data-name=\"tiny\"] button.load').click();")
    wait_for(page, f"{model_state('tiny')} === 'loaded'")
    running = httpx.get(served.url + "/api/ps", timeout=10).json()["models"]
    assert [m["name"] for m in running] == ["tiny:latest"]
    # "busy; then 5m 0s" while the button's load request is still open, then the countdown.
    keep_alive = "document.querySelector('.model[data-name=\"tiny\"] .keep-alive').textContent"
    countdown = wait_for(page, f"(t => t.includes('unloads in') && t)({keep_alive})")
    assert re.fullmatch(r"unloads in \d+m \d+s", str(countdown)), countdown


def test_a_request_sent_elsewhere_appears_in_the_recent_list(
    page: WebDriver, served: Daemon
) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    answer = httpx.post(served.url + "/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200
    row = wait_for(
        page,
        "[...document.querySelectorAll('#recent li.request')].map(r => r.textContent)"
        ".find(t => t.includes('/v1/chat/completions'))",
    )
    assert "tiny" in str(row) and "200" in str(row) and "5 tokens" in str(row)


def test_the_log_tail_shows_the_workers_output(page: WebDriver) -> None:
    page.execute_script("document.querySelector('.model[data-name=\"tiny\"] button.logs').click();")
    text = wait_for(page, "document.getElementById('logs').textContent")
    assert "fake vLLM" in str(text)


def test_a_narrow_window_never_scrolls_sideways(page: WebDriver) -> None:
    page.set_window_size(*NARROW)
    try:
        wait_for(page, f"window.innerWidth <= {NARROW[0]}")
        time.sleep(0.5)  # a snapshot or two redrawn at this width
        wide = page.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;"
        )
        assert wide == 0
    finally:
        page.set_window_size(*WIDE)


def test_the_page_logged_no_script_errors(page: WebDriver) -> None:
    # Chrome's console (script errors, failed loads); get_log is the Chrome driver's own.
    log: list[dict[str, Any]] = page.get_log("browser")  # type: ignore[attr-defined]
    errors = [e for e in log if e["level"] == "SEVERE"]
    assert errors == []


def test_with_keys_the_page_asks_for_one_and_keeps_it_in_the_tab(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    started = time.time() - 1
    with (
        daemon(tmp_path_factory.mktemp("keys"), api_key=ADMIN) as running,
        browser() as driver,
    ):
        driver.get(running.url + "/ui")
        wait_for(driver, "!document.getElementById('key-form').hidden")
        driver.find_element("id", "key").send_keys(ADMIN)
        driver.find_element("css selector", "#key-form button").click()
        wait_for(driver, "document.getElementById('connection').dataset.state === 'live'")
        assert wait_for(driver, model_state("tiny")) == "unloaded"
        assert driver.execute_script("return sessionStorage.getItem('vllama-api-key');") == ADMIN
        assert driver.execute_script("return localStorage.length;") == 0
        assert driver.get_cookies() == []
    assert_no_leftovers(started)
