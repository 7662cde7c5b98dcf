"""A real daemon with fake workers and a headless Chromium driven by Selenium, for the status
page's browser tests and its screenshots (`python -m tests.browser.screenshots`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.component.fakes import worker_ports
from tests.conftest import FAKE_ENGINE_COMMAND
from tests.daemon import Daemon, free_port, write_config

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

WIDE = (1280, 900)
NARROW = (390, 844)  # a phone's width
MODELS = ("tiny", "tiny-embed")


def chromium() -> tuple[str, str] | None:
    """Debian's chromium and chromium-driver (the browser and its driver), or None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if chromium() is None:
        return (
            "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    return None


@contextlib.contextmanager
def daemon(
    folder: Path, models: dict[str, dict[str, Any]] | None = None, **server: Any
) -> Iterator[Daemon]:
    """`models`: name -> extra model keys (default: MODELS, plain)."""
    tables = models if models is not None else {name: {} for name in MODELS}
    (folder / "hf-cache").mkdir(exist_ok=True)
    config = write_config(
        folder / "vllama.toml",
        {
            "engine_command": FAKE_ENGINE_COMMAND,
            "stop_timeout": 3,
            "models_dir": str(folder / "models"),
            "runtime_dir": str(folder / "run"),
            **worker_ports(),
            **server,
        },
        {name: {"model": f"fake/{name}", **extra} for name, extra in tables.items()},
    )
    saved = {name: os.environ.get(name) for name in ("HF_HUB_CACHE", "VLLAMA_HOST")}
    os.environ["HF_HUB_CACHE"] = str(folder / "hf-cache")  # only the configured models
    os.environ.pop("VLLAMA_HOST", None)
    try:
        started = Daemon(config, free_port(), folder / "vllama.log")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    with started:
        yield started


@contextlib.contextmanager
def browser() -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = chromium()
    assert found is not None
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers, where the sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WIDE[0]},{WIDE[1]}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, script: str, timeout: float = 30) -> object:
    """Polls a JavaScript expression until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {script}")
        time.sleep(0.1)


def model_state(name: str) -> str:
    return f"document.querySelector('.model[data-name=\"{name}\"]')?.dataset.state"
