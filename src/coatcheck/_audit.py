"""Suspicious events on the ``coatcheck.security`` logger, rate-limited.

A flood of forged or junk requests must not become a flood of log lines, so at most
60 lines a minute are written; the rest are counted and summarised in the next line.
Messages never contain a session ID or a token.
"""

from __future__ import annotations

import logging
import time
from collections import deque

security_log = logging.getLogger("coatcheck.security")

_PER_MINUTE = 60
_recent: deque[float] = deque()
_dropped = 0


def security_event(message: str) -> None:
    global _dropped
    now = time.monotonic()
    while _recent and now - _recent[0] > 60:
        _recent.popleft()
    if len(_recent) >= _PER_MINUTE:
        _dropped += 1
        return
    _recent.append(now)
    if _dropped:
        message = f"{message} ({_dropped} similar events not logged)"
        _dropped = 0
    security_log.warning(message)
