"""Blocking calls to one SGLang server's weight-update endpoints (`{"success", "message"}` answers)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests


class EngineRequestError(RuntimeError):
    """An engine answered a control request with an error, or not at all."""


@dataclass(frozen=True, slots=True)
class EngineEndpoint:
    """What a sender needs to reach one learner server: its URL, TP size and API key."""

    url: str
    tp: int = 1
    api_key: str | None = None

    def post(
        self, path: str, payload: dict[str, Any] | None = None, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """POST `payload` to `path`; raise EngineRequestError unless the answer is 200 and successful."""
        headers = {} if self.api_key is None else {"Authorization": f"Bearer {self.api_key}"}
        try:
            response = requests.post(self.url + path, json=payload or {}, headers=headers, timeout=timeout_s)
        except requests.RequestException as error:
            raise EngineRequestError(f"{self.url}{path}: {type(error).__name__}: {error}") from error
        body: dict[str, Any] = {}
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json() if response.content else {}
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
