"""A thin HTTP client for the `vllama` command line: the daemon's API over stdlib `urllib`.

The CLI must start fast and work without the dev dependencies, so no aiohttp event loop and no
httpx here. Errors come out as two exceptions: `DaemonUnreachable` (nothing answers at the
address) and `DaemonError` (an HTTP error or an in-band `{"error": ...}` NDJSON line), each
carrying the message the CLI prints.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

DEFAULT_PORT = 11434
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class DaemonUnreachable(Exception):
    def __init__(self, url: str, reason: str = "") -> None:
        super().__init__(f"could not connect to vllama at {url}: is it running? (vllama serve)")
        self.url = url
        self.reason = reason


class DaemonError(Exception):
    """The daemon answered with an error: `status` is 0 for an error inside a stream."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def daemon_url(value: str | None) -> str:
    """`VLLAMA_HOST` as a base URL, the way OLLAMA_HOST is read: `host`, `host:port` or
    `scheme://host:port`; no port means 11434, and a wildcard listen address (0.0.0.0, ::)
    means this machine's loopback."""
    text = (value or "").strip().rstrip("/")
    if not text:
        return DEFAULT_URL
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
    if scheme not in ("http", "https"):
        raise ValueError(f"VLLAMA_HOST: unsupported scheme {scheme!r} in {value!r}")
    if rest.count(":") > 1 and not rest.startswith("["):  # a bare IPv6 address
        rest = f"[{rest}]"
    parts = urllib.parse.urlsplit(f"{scheme}://{rest}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"VLLAMA_HOST: invalid port in {value!r}") from None
    host = parts.hostname or "127.0.0.1"
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def error_message(status: int, body: bytes) -> str:
    """The message of an error answer: Ollama's `{"error": "..."}`, OpenAI's envelope, or text."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
    text = body.decode(errors="replace").strip()
    return text or f"HTTP {status}"


TIMEOUT = 30.0  # seconds, for requests that answer at once; None = as long as the daemon takes


class Client:
    """Requests to one daemon. Streams wait as long as the daemon takes (a model load can take
    minutes); plain requests time out after `timeout` seconds (None: never)."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        """`api_key`: sent as a Bearer token (VLLAMA_API_KEY for the CLI)."""
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        # A proxy from the environment must never see requests to this machine's own daemon.
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def _open(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> http.client.HTTPResponse:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key}")
        try:
            response: http.client.HTTPResponse = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = error_message(exc.code, exc.read())
            finally:
                exc.close()
            raise DaemonError(exc.code, message) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                raise DaemonError(
                    0, f"vllama at {self.base_url} did not answer within {timeout or 0:g}s"
                ) from None
            raise DaemonUnreachable(self.base_url, str(reason)) from None
        return response

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = TIMEOUT
    ) -> Any:
        """One request; the decoded JSON answer (None for an empty body)."""
        with self._open(method, path, body, timeout) as response:
            try:
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise DaemonError(0, f"the connection to vllama was lost: {exc}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise DaemonError(0, f"vllama sent an answer that is not JSON: {raw[:200]!r}") from None

    def get(self, path: str, timeout: float | None = TIMEOUT) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float | None = TIMEOUT) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def delete(self, path: str, body: Any) -> Any:
        return self.request("DELETE", path, body)

    def stream(self, method: str, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """The objects of an NDJSON answer as they arrive; an `{"error": ...}` line raises."""
        with self._open(method, path, body, None) as response:
            while True:
                line = _read_line(response)
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise DaemonError(
                        0, f"vllama sent a line that is not JSON: {line[:200]!r}"
                    ) from None
                if not isinstance(obj, dict):
                    continue
                if obj.get("error"):
                    raise DaemonError(0, error_message(0, line))
                yield obj

    def events(self, path: str) -> Iterator[tuple[str, Any]]:
        """A Server-Sent Events stream's events as (name, decoded JSON data), as they arrive,
        until the daemon ends the stream."""
        with self._open("GET", path, None, None) as response:
            name, data = "message", []
            while True:
                raw = _read_line(response)
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\r\n")
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:  # a blank line ends an event
                    try:
                        yield name, json.loads("\n".join(data))
                    except ValueError:
                        raise DaemonError(0, "vllama sent an event that is not JSON") from None
                    name, data = "message", []


def _read_line(response: http.client.HTTPResponse) -> bytes:
    """The next line of a streamed answer (b"" at its end); a broken connection is an error."""
    try:
        return response.readline()
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonError(0, f"the connection to vllama was lost: {exc}") from None
