"""The status page's screenshots in docs/: `python -m tests.browser.screenshots [FOLDER]`.

A daemon with fake workers in each state the page draws (loaded with requests behind it,
loading, failed, unloaded), then the page at a desktop and a phone width. Not a test: `make
test` never writes into docs/.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.browser.helpers import NARROW, WIDE, browser, daemon, missing, model_state, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _background(url: str, body: dict[str, object]) -> None:
    def send() -> None:
        try:
            httpx.post(url, json=body, timeout=120)
        except httpx.HTTPError:
            pass  # ended by the daemon's shutdown: expected

    threading.Thread(target=send, daemon=True).start()


def main(folder: Path) -> int:
    why = missing()
    if why is not None:
        print(f"cannot take screenshots: {why}", file=sys.stderr)
        return 1
    models: dict[str, dict[str, object]] = {
        "tiny": {},
        "tiny-embed": {},
        "slow": {"env": {"FAKE_VLLM_START_DELAY": "120"}},
        "broken": {"env": {"FAKE_VLLM_CRASH_AT_START": "1"}},
    }
    with tempfile.TemporaryDirectory() as scratch, daemon(Path(scratch), models) as running:
        api = running.url
        httpx.post(api + "/api/generate", json={"model": "tiny"}, timeout=60)
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
        httpx.post(
            api + "/v1/chat/completions",
            json={**chat, "stream": True, "stream_options": {"include_usage": True}},
            timeout=60,
        )
        httpx.post(api + "/api/chat", json={**chat, "stream": False}, timeout=60)
        httpx.post(api + "/api/generate", json={"model": "broken"}, timeout=60)
        _background(api + "/api/generate", {"model": "slow"})
        with browser() as driver:
            driver.get(api + "/ui")
            wait_for(driver, f"{model_state('tiny')} === 'loaded'")
            wait_for(driver, f"{model_state('slow')} === 'loading'")
            driver.execute_script(
                "document.querySelector('.model[data-name=\"tiny\"] button.logs').click();"
            )
            time.sleep(3)  # a few seconds into the slow load, and the log read
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            for _ in range(2):  # the second pass: the layout at the new height
                driver.set_window_size(WIDE[0], max(WIDE[1], int(height) + 40))
                time.sleep(0.3)
                height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.save_screenshot(str(folder / "ui-wide.png"))
            driver.set_window_size(*NARROW)
            time.sleep(0.5)
            for _ in range(2):
                height = driver.execute_script("return document.documentElement.scrollHeight;")
                driver.set_window_size(NARROW[0], int(height) + 40)
                time.sleep(0.3)
            driver.save_screenshot(str(folder / "ui-narrow.png"))
    print(f"wrote {folder / 'ui-wide.png'} and {folder / 'ui-narrow.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs"))
