"""Helpers for testing an app that uses coatcheck.

Two things trip up a first test, both on purpose:

- The session cookie is ``Secure``, so a client on ``http://testserver`` (the default of
  Starlette's ``TestClient``) never sends it back and every request looks anonymous.
  Give the client ``base_url=TEST_BASE_URL``. ``TestClient.websocket_connect`` ignores
  the base URL and uses ``ws://``: give it a whole URL under :data:`TEST_WS_BASE_URL`.
- Once a request carries a session cookie, its unsafe requests must pass the CSRF
  check. Browsers do by sending ``Sec-Fetch-Site``; a test client does when it sends
  :data:`SAME_ORIGIN` with every request.

    from fastapi.testclient import TestClient
    from coatcheck.testing import SAME_ORIGIN, TEST_BASE_URL, FakeClock

    client = TestClient(app, base_url=TEST_BASE_URL, headers=SAME_ORIGIN)
    with client.websocket_connect(f"{TEST_WS_BASE_URL}/ws", headers=SAME_ORIGIN) as ws: ...

For timeouts, build the app with ``SessionConfig(clock=clock)`` where ``clock`` is a
:class:`FakeClock`, and move time with ``clock.advance(seconds)``.
"""

from __future__ import annotations

import time

__all__ = ["SAME_ORIGIN", "TEST_BASE_URL", "TEST_WS_BASE_URL", "FakeClock"]

TEST_BASE_URL = "https://testserver"
TEST_WS_BASE_URL = "wss://testserver"
# What a browser sends with a request made by the app's own pages.
SAME_ORIGIN: dict[str, str] = {"sec-fetch-site": "same-origin"}


class FakeClock:
    """A wall clock that moves only when told, for ``SessionConfig(clock=...)``.

    It starts at ``start`` (seconds since the epoch; now by default). Stores compare
    expiry with this clock too, so a session expires the moment the clock passes its
    deadline, without waiting.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward")
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock({self.now!r})"
