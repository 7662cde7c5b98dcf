"""Open WebUI's first chat against a fresh vllama, in a real browser (issue 20).

What a new user does: `make serve` (the default config: the demo models, built into an empty
models folder), then Open WebUI with its Ollama connection at vllama and nothing else set, a
browser, sign-up (the first account is the admin), the model Open WebUI selects (or `tiny`,
picked in its menu, if it selected another), "hello", and the answer. Headless Chromium does the
clicking (Selenium, as tests/browser); the check ends when Open WebUI's own record of the chat
says the answer is done. It prints the figures: Open WebUI's start, the model it selected, the
time from "send" to the finished answer, and every request vllama's access log saw with its
status.

Run on demand, not in `make test`: Open WebUI is a 7.4 GB install (about 11 minutes here) of its
own, with CUDA torch, and the first chat waits for the demo model's load. Install it in its own
virtualenv, never vllama's:

    python3.11 -m venv /tmp/owui-venv && /tmp/owui-venv/bin/pip install open-webui
    .venv/bin/python benchmarks/openwebui_check.py --openwebui /tmp/owui-venv

Needs chromium, chromedriver and selenium (`.ci/run` installs them for tests/browser). Offline:
Open WebUI runs with OFFLINE_MODE (no update check, no model downloads; it logs that its
retrieval embedding model is missing, which a chat does not need) and its telemetry off.
`--record FILE` puts a relay between Open WebUI and vllama and writes each request it passed
(method, path, JSON body), in order, to FILE with Open WebUI's version: how
tests/e2e/fixtures/open_webui_first_chat.json was captured. Everything runs on loopback in a
temporary folder (`--keep DIR` keeps it: logs, the screenshot); every process started is stopped
at the end (vllama and its workers, the relay, Open WebUI, Chromium).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browser.helpers import browser, missing  # noqa: E402
from tests.daemon import free_port  # noqa: E402

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

EMAIL = "admin@example.com"
PASSWORD = "correct-horse-battery-staple"
CHAT_MODEL = "tiny:latest"


def start(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """A process in a session of its own (so its group can be stopped whole), output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def wait_ok(url: str, proc: subprocess.Popen[bytes], timeout: float, what: str) -> float:
    """Seconds until `url` answers 200; raises if `proc` exits or `timeout` passes."""
    began = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"{what} did not answer {url} within {timeout:g}s")
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """SIGTERM (vllama stops its workers on it), then SIGKILL for whatever of its process group
    and its descendants (workers under their own guards, in groups of their own) is left."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(psutil.Error):
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in family:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    proc.wait(10)


def start_vllama(folder: Path, port: int) -> subprocess.Popen[bytes]:
    """`vllama serve` with no config (the demo, as `make serve`), its state in `folder`."""
    low = random.randrange(20000, 31950)  # workers' ports, clear of a default daemon's
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "VLLAMA_HOST": "127.0.0.1",
        "VLLAMA_PORT": str(port),
        "VLLAMA_MODELS_DIR": str(folder / "models"),
        "VLLAMA_RUNTIME_DIR": str(folder / "run"),
        "VLLAMA_WORKER_PORT_MIN": str(low),
        "VLLAMA_WORKER_PORT_MAX": str(low + 49),
        "VLLAMA_LOG_FORMAT": "json",
        "HF_HUB_CACHE": str(folder / "hf-cache"),  # only the demo, not this machine's models
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("VLLAMA_CONFIG", None)
    # -P: the checkout this script is in, whatever the working directory.
    command = [sys.executable, "-P", "-m", "vllama", "serve"]
    return start(command, folder / "vllama.log", env, folder)


def start_openwebui(
    venv: Path, folder: Path, port: int, ollama_url: str
) -> subprocess.Popen[bytes]:
    data = folder / "openwebui"
    data.mkdir()
    env = {
        **os.environ,
        "DATA_DIR": str(data),
        "OLLAMA_BASE_URL": ollama_url,  # the connection a user sets, nothing else
        "WEBUI_SECRET_KEY": secrets.token_urlsafe(32),  # else written beside the install
        "OFFLINE_MODE": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(folder / "openwebui-hf"),
        "ENABLE_VERSION_UPDATE_CHECK": "false",
        "SCARF_NO_ANALYTICS": "true",
        "DO_NOT_TRACK": "true",
        "ANONYMIZED_TELEMETRY": "false",
    }
    command = [
        str(venv / "bin" / "open-webui"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return start(command, folder / "openwebui.log", env, data)


def relay_main(port: int, upstream: str, record: Path) -> None:
    """`--relay`: forward every request to `upstream`, streamed, appending each request as it
    came (method, path, JSON body) to `record` as a JSON line."""
    import aiohttp
    from aiohttp import web

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        entry: dict[str, Any] = {"method": request.method, "path": request.path_qs}
        if body:
            entry["body"] = json.loads(body)
        with record.open("a") as out:
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type",)}
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            response = web.StreamResponse(status=answer.status)
            if "Content-Type" in answer.headers:
                response.content_type = answer.content_type
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        yield
        await app["session"].close()

    app = web.Application(client_max_size=64 << 20)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{path:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def access_log(log: Path) -> list[dict[str, Any]]:
    """vllama's access log: one entry per request, in the order they ended."""
    entries = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == "request":
                entries.append(entry)
    return entries


def first_chat(driver: WebDriver, url: str, prompt: str, timeout: float) -> dict[str, Any]:
    """Sign up, keep or pick the chat model, send `prompt`, wait for Open WebUI to record the
    answer as done. Returns what it showed and the timings."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(seconds: float = 60) -> WebDriverWait[WebDriver]:
        return WebDriverWait(driver, seconds, poll_frequency=0.2)

    def click(xpath: str, seconds: float = 60) -> None:
        wait(seconds).until(ready.element_to_be_clickable((By.XPATH, xpath))).click()

    driver.get(url + "/")
    click("//button[contains(., 'Get started')]")
    wait().until(ready.visibility_of_element_located((By.ID, "name"))).send_keys("Admin")
    driver.find_element(By.ID, "email").send_keys(EMAIL)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    click("//button[contains(., 'Create Admin Account')]")
    selector = wait().until(
        ready.visibility_of_element_located((By.ID, "model-selector-model-button"))
    )
    time.sleep(2)  # the release notes dialog comes up a moment after the chat page
    for dialog in driver.find_elements(By.XPATH, '//button[contains(., "Okay, Let\'s Go!")]'):
        dialog.click()
    selected = selector.text.strip()
    if selected != CHAT_MODEL:
        selector.click()
        click(f"//button[@aria-label='Select {CHAT_MODEL} model']")
    box = wait().until(ready.element_to_be_clickable((By.ID, "chat-input")))
    box.click()
    box.send_keys(prompt)
    click("//button[@id='send-message-button']")
    sent = time.monotonic()
    token = driver.execute_script("return localStorage.token")
    wait().until(lambda d: "/c/" in d.current_url)
    chat_id = driver.current_url.rsplit("/c/", 1)[1].split("?")[0]
    headers = {"Authorization": f"Bearer {token}"}
    message: dict[str, Any] = {}
    while time.monotonic() - sent < timeout:
        chat = httpx.get(f"{url}/api/v1/chats/{chat_id}", headers=headers, timeout=10).json()
        history = chat["chat"]["history"]
        current = history["messages"].get(history.get("currentId") or "", {})
        if current.get("role") == "assistant" and (current.get("done") or current.get("error")):
            message = current
            break
        time.sleep(0.5)
    answered = time.monotonic() - sent
    shown = driver.execute_script(
        "return document.querySelector('#messages-container')?.innerText || ''"
    )
    return {
        "selected_model": selected,
        "picked": selected != CHAT_MODEL,
        "answer_seconds": round(answered, 1) if message else None,
        "done": bool(message.get("done")) and not message.get("error"),
        "error": message.get("error"),
        "answer_chars": len(message.get("content") or ""),
        "usage": {k: message.get("usage", {}).get(k) for k in ("prompt_eval_count", "eval_count")},
        "shown": shown[-400:],
        "chat_id": chat_id,
        "headers": headers,
    }


def settle(log: Path, quiet: float = 15, limit: float = 120) -> None:
    """Waits until vllama's access log has had nothing new for `quiet` seconds (Open WebUI's
    title, follow-up and tag tasks come after the answer)."""
    began = time.monotonic()
    count, since = -1, time.monotonic()
    while time.monotonic() - began < limit:
        now = len(access_log(log))
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(1)


def openwebui_version(venv: Path) -> str:
    command = [
        str(venv / "bin" / "python"),
        "-c",
        "import importlib.metadata as m;print(m.version('open-webui'))",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        stop(proc)


def check(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    venv = Path(args.openwebui).expanduser()
    figures: dict[str, Any] = {"open_webui": openwebui_version(venv)}
    lines = folder / "requests.jsonl"  # the relay's record, with --record
    vllama_port, openwebui_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        daemon = stack.enter_context(running(start_vllama(folder, vllama_port)))
        vllama_url = f"http://127.0.0.1:{vllama_port}"
        figures["vllama_start_seconds"] = round(wait_ok(vllama_url + "/", daemon, 120, "vllama"), 1)
        ollama_url = vllama_url
        if args.record:
            relay_port = free_port()
            relay = [sys.executable, __file__, "--relay", str(relay_port), vllama_url, str(lines)]
            proxy = stack.enter_context(
                running(start(relay, folder / "relay.log", dict(os.environ), folder))
            )
            ollama_url = f"http://127.0.0.1:{relay_port}"
            wait_ok(ollama_url + "/api/version", proxy, 30, "the relay")
        webui = stack.enter_context(
            running(start_openwebui(venv, folder, openwebui_port, ollama_url))
        )
        url = f"http://127.0.0.1:{openwebui_port}"
        figures["openwebui_start_seconds"] = round(
            wait_ok(url + "/health", webui, 600, "Open WebUI"), 1
        )
        with browser() as driver:
            chat = first_chat(driver, url, args.prompt, args.timeout)
            settle(folder / "vllama.log")
            driver.save_screenshot(str(folder / "openwebui.png"))
        headers = chat.pop("headers")
        saved = httpx.get(f"{url}/api/v1/chats/{chat.pop('chat_id')}", headers=headers, timeout=10)
        chat["title"] = saved.json().get("title")
        figures.update(chat)
    if args.record:
        sent = [json.loads(line) for line in lines.read_text().splitlines()]
        document = {"open_webui": figures["open_webui"], "requests": sent}
        Path(args.record).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    # Open WebUI's requests; not this script's own readiness polls of `/`.
    requests = [r for r in access_log(folder / "vllama.log") if r["path"] != "/"]
    figures["requests"] = [
        f"{r['method']} {r['path']} {r['status']} {r.get('model') or '-'} {r['seconds']}s"
        for r in requests
    ]
    figures["statuses"] = dict(Counter(str(r["status"]) for r in requests))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--openwebui", help="Open WebUI's virtualenv (has bin/open-webui)")
    parser.add_argument("--prompt", default="hello")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the answer")
    parser.add_argument("--record", help="write Open WebUI's requests to vllama here (JSON)")
    parser.add_argument("--keep", help="keep logs and the screenshot in this folder")
    parser.add_argument("--relay", nargs=3, help=argparse.SUPPRESS)  # PORT UPSTREAM FILE
    args = parser.parse_args()
    if args.relay:
        relay_main(int(args.relay[0]), args.relay[1], Path(args.relay[2]))
        return 0
    if not args.openwebui:
        parser.error("--openwebui VENV is required")
    reason = missing()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        if args.keep:
            folder = Path(args.keep).resolve()
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="owui-check-")))
        figures = check(args, folder)
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    return 0 if figures.get("done") else 1


if __name__ == "__main__":
    sys.exit(main())
