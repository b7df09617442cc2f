"""Suspicious events on the ``coatcheck.security`` logger, rate-limited.

A flood of forged or junk requests must not become a flood of log lines, so each kind
of event writes at most 60 lines a minute; the rest are counted and summarised in its
next line. Kinds keep separate budgets: a flood of forged forms must not hide the one
cookie-tossing line that shows who sent it. Messages never contain a session ID or a
token.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Literal

security_log = logging.getLogger("coatcheck.security")

Kind = Literal["forgery", "cookie"]

_PER_MINUTE = 60


class _Budget:
    """The times of a kind's lines in the last minute, and how many it dropped since."""

    __slots__ = ("dropped", "recent")

    def __init__(self) -> None:
        self.recent: deque[float] = deque()
        self.dropped = 0


_budgets: dict[str, _Budget] = {}


def security_event(kind: Kind, message: str) -> None:
    budget = _budgets.get(kind)
    if budget is None:
        budget = _budgets[kind] = _Budget()
    now = time.monotonic()
    recent = budget.recent
    while recent and now - recent[0] > 60:
        recent.popleft()
    if len(recent) >= _PER_MINUTE:
        budget.dropped += 1
        return
    recent.append(now)
    if budget.dropped:
        message = f"{message} ({budget.dropped} similar events not logged)"
        budget.dropped = 0
    security_log.warning(message)
