"""Who may call: the browser's Origin and Host (as Ollama checks them), then API keys.

- Origin: a request from a web page carries `Origin`. Pages on this machine (`localhost`,
  `127.0.0.1`, `[::1]`, any port and scheme) and desktop-app schemes are allowed, plus
  `[server] allowed_origins` (`"*"` for all, or patterns such as `https://*.example.com`); any
  other origin gets 403. Allowed origins get CORS headers, and preflights an answer.
- Host: on a loopback bind, a `Host` that is not loopback or listed in `allowed_hosts` gets 403,
  so a DNS-rebinding page cannot reach the daemon through a name it controls.
- Keys: with keys configured, every request but `GET/HEAD /` needs one (`Authorization: Bearer`
  or `x-api-key`); `/metrics` too unless `metrics_public`. An `inference` key gets 403 on the
  admin operations. Keys are compared as SHA-256 digests in constant time and never logged.
- The status page: `/ui`'s static files hold no data and are open (a browser cannot send a key
  to open a page); the page asks for a key and sends it on its own requests. Its stream,
  `/api/vllama/events`, is read-only like `/api/ps`: any key. A page's own origin (the Origin
  naming the Host it was served from) is allowed when that host is an IP address or in
  `allowed_hosts`, so the page works on a non-loopback bind; not for any other name, which a
  DNS-rebinding page could make its own.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from vllama.api.errors import ApiError, BadRequest, Handler, error_response
from vllama.config.access import Scope, sha256_hex
from vllama.config.settings import ServerSettings

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_APP_SCHEMES = ("app", "file", "tauri", "vscode-webview")
_PAGE_PATHS = frozenset({"/ui", "/ui/app.js", "/ui/style.css"})
_READ_ONLY_OWN = frozenset({"/api/vllama/events"})  # under /api/vllama/, yet any key reads it
_HOSTS_KEPT = 64  # Host verdicts remembered; a daemon is called by a handful of names
_ADMIN_PATHS = frozenset({"/api/pull", "/api/create", "/api/copy", "/api/delete", "/api/push"})
_CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, User-Agent, Accept, "
    "X-Requested-With, X-Api-Key, X-Request-Id, Anthropic-Version, OpenAI-Beta, "
    "X-Stainless-Lang, X-Stainless-Package-Version, X-Stainless-OS, X-Stainless-Arch, "
    "X-Stainless-Runtime, X-Stainless-Runtime-Version, X-Stainless-Retry-Count, "
    "X-Stainless-Timeout",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin",
}


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES or name == "localhost.":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """What `[server]` allows, prepared once (digests, patterns)."""

    keys: tuple[tuple[str, Scope], ...]  # (sha256 hex, scope)
    metrics_public: bool
    origins: tuple[str, ...]
    hosts: tuple[str, ...]
    loopback_bind: bool
    # Host header -> (parses, allowed): `urlsplit` and pattern matching once per name, not per
    # request. Emptied when full, so a client sending ever-new Hosts cannot grow it.
    _host_verdicts: dict[str, tuple[bool, bool]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Access:
        keys = [(key.digest, key.scope) for key in settings.api_keys]
        if settings.api_key:
            keys.append((sha256_hex(settings.api_key), "admin"))
        return cls(
            keys=tuple(keys),
            metrics_public=settings.metrics_public,
            origins=tuple(settings.allowed_origins),
            hosts=tuple(h.lower() for h in settings.allowed_hosts),
            loopback_bind=is_loopback(settings.host),
        )

    def origin_allowed(self, origin: str) -> bool:
        if any(pattern == "*" or fnmatch.fnmatchcase(origin, pattern) for pattern in self.origins):
            return True
        parts = _split(origin)
        if parts is None:
            return False
        if parts.scheme in _APP_SCHEMES:
            return True
        return parts.scheme in ("http", "https") and is_loopback(parts.hostname or "")

    def host_allowed(self, host_header: str) -> bool:
        if not self.loopback_bind:
            return True
        parts = _split(f"//{host_header}")
        host = (parts.hostname or "") if parts is not None else ""
        return is_loopback(host) or any(fnmatch.fnmatchcase(host, h) for h in self.hosts)

    def host_verdict(self, host_header: str) -> tuple[bool, bool]:
        """(whether the Host header parses, whether `host_allowed`), remembered."""
        verdict = self._host_verdicts.get(host_header)
        if verdict is None:
            parses = _split(f"//{host_header}") is not None
            verdict = (parses, parses and self.host_allowed(host_header))
            if len(self._host_verdicts) >= _HOSTS_KEPT:
                self._host_verdicts.clear()
            self._host_verdicts[host_header] = verdict
        return verdict

    def own_origin(self, origin: str, host_header: str) -> bool:
        """A page this daemon served (the status page) calling it back: its Origin names the
        Host. Only for an IP address or an `allowed_hosts` name: a rebinding page's origin is a
        name it controls, pointed at this daemon, and would pass a bare comparison."""
        parts = _split(origin)
        if parts is None or parts.scheme not in ("http", "https"):
            return False
        if parts.netloc.lower() != host_header.lower():
            return False
        host = (parts.hostname or "").lower()
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return any(fnmatch.fnmatchcase(host, h) for h in self.hosts)

    def scope_of(self, presented: str) -> Scope | None:
        """The presented key's scope, or None; every configured digest is compared."""
        digest = sha256_hex(presented)
        found: Scope | None = None
        for known, scope in self.keys:
            if hmac.compare_digest(known, digest):
                found = scope
        return found


def _split(url: str) -> SplitResult | None:
    """The URL's parts, or None for one that cannot be parsed (`http://[zz`: an IPv6 bracket
    left open), which no check may raise on: the answer to it must still go out."""
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key", "").strip()


def _needs_admin(request: web.Request) -> bool:
    if request.path in _READ_ONLY_OWN:
        return False
    return request.path in _ADMIN_PATHS or request.path.startswith("/api/vllama/")


def _is_open(request: web.Request, access: Access) -> bool:
    if request.method in ("GET", "HEAD") and (request.path == "/" or request.path in _PAGE_PATHS):
        return True
    return request.path == "/metrics" and access.metrics_public


def security_middleware(access: Access) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        parses, host_allowed = access.host_verdict(request.headers.get("Host", ""))
        if not parses:
            return error_response(request.path, BadRequest("malformed Host header"))
        if (
            origin is not None
            and not access.own_origin(origin, request.host)
            and not access.origin_allowed(origin)
        ):
            return error_response(request.path, ApiError(403, f"origin {origin!r} not allowed"))
        if not host_allowed:
            return error_response(request.path, ApiError(403, "host not allowed"))
        if request.method == "OPTIONS" and origin is not None:
            return web.Response(status=204, headers=_cors(origin))
        denied = _check_key(request, access)
        if denied is not None:
            return error_response(request.path, denied)
        return await handler(request)

    return middleware


def cors_headers(access: Access) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """on_response_prepare: an allowed origin's CORS headers, on streamed answers too."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and access.origin_allowed(origin):
            response.headers.update(_cors(origin))

    return add


def _check_key(request: web.Request, access: Access) -> ApiError | None:
    if not access.keys or _is_open(request, access):
        return None
    presented = _presented_key(request)
    scope = access.scope_of(presented) if presented else None
    if scope is None:
        message = "invalid API key" if presented else "an API key is required"
        return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="vllama"'})
    if scope != "admin" and _needs_admin(request):
        return ApiError(403, f"{request.path} needs an admin key")
    return None


def _cors(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, **_CORS_HEADERS}
