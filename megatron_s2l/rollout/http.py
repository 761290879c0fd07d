"""The one HTTP layer for SGLang engine calls, on httpx: blocking control calls (`EngineEndpoint`:
the weight-update endpoints, with their `{"success", "message"}` answers), health checks, and the
async session the rollout client generates through."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx


def bearer(api_key: str | None) -> dict[str, str]:
    """The engines' authorization header for `api_key` (none without a key)."""
    return {} if api_key is None else {"Authorization": f"Bearer {api_key}"}


def http_get_ok(url: str, api_key: str | None = None, timeout_s: float = 5.0) -> bool:
    """True when GET `url` answers 2xx within `timeout_s`."""
    try:
        return httpx.get(url, headers=bearer(api_key), timeout=timeout_s).is_success
    except httpx.HTTPError:
        return False


def http_get_status(url: str, api_key: str | None = None, timeout_s: float = 10.0) -> int | None:
    """The HTTP status GET `url` answers with (None when it does not answer)."""
    try:
        return httpx.get(url, headers=bearer(api_key), timeout=timeout_s).status_code
    except httpx.HTTPError:
        return None


def http_get_json(url: str, api_key: str | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
    """GET `url` and decode its JSON answer; raise EngineRequestError on any failure."""
    try:
        response = httpx.get(url, headers=bearer(api_key), timeout=timeout_s)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as error:
        raise EngineRequestError(f"GET {url}: {type(error).__name__}: {error}") from error


def async_session(api_key: str | None, timeout_s: float) -> httpx.AsyncClient:
    """The async client of one batch of requests; no connection cap (the rollout client bounds its
    requests in flight itself)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(headers=bearer(api_key), timeout=timeout_s, limits=limits)


class EngineRequestError(RuntimeError):
    """An engine answered a control request with an error, or not at all."""


@dataclass(frozen=True, slots=True)
class EngineEndpoint:
    """What a sender needs to reach one learner server: its URL, TP size and API key."""

    url: str
    tp: int = 1
    api_key: str | None = field(default=None, repr=False)
    """Kept out of `repr` (endpoints appear in logs and error messages)."""

    def post(
        self, path: str, payload: dict[str, Any] | None = None, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """POST `payload` to `path`; raise EngineRequestError unless the answer is 200 and successful."""
        try:
            response = httpx.post(
                self.url + path, json=payload or {}, headers=bearer(self.api_key), timeout=timeout_s
            )
        except httpx.HTTPError as error:
            raise EngineRequestError(f"{self.url}{path}: {type(error).__name__}: {error}") from error
        body: dict[str, Any] = {}
        if response.headers.get("content-type", "").startswith("application/json"):
            body = (response.json() if response.content else None) or {}  # some answer `null`
        if response.status_code != 200 or body.get("success") is False:
            raise EngineRequestError(
                f"{self.url}{path} answered {response.status_code}: {response.text[:500]}"
            )
        return body

    def flush_cache(self, timeout_s: float) -> None:
        """Flush the radix cache, retrying while SGLang refuses (400: requests still running).

        Sent without SGLang's own `?timeout=`: that variant waits for an empty waiting queue too,
        which never comes while retracted requests wait there; the plain one ignores waiting
        requests once generation is paused.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.post("/flush_cache", timeout_s=timeout_s)
                return
            except EngineRequestError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
