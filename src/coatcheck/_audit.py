"""Log lines that a flood of requests could repeat, kept to a few.

A flood of forged or junk requests, or every request of an outage, must not become a
flood of log lines. So each kind of line has a budget of lines a minute (60 for the
``coatcheck.security`` logger's suspicious events); the rest are counted, and the
count, with the time the counting began, is given in the kind's next line. Kinds keep
separate budgets: a flood of forged forms must not hide the one cookie-tossing line
that shows who sent it. Lines that say the same thing every time (a stale value, a
route that changes its session too late) are said once. Messages never contain a
session ID or a token.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Hashable
from typing import Literal

security_log = logging.getLogger("coatcheck.security")

Kind = Literal["forgery", "cookie", "sealed"]

_PER_MINUTE = 60
_ONCE_AT_MOST = 1024  # things said once remembered; then they may be said once more


class _Budget:
    """The times of a kind's lines in the last minute, and how many it dropped since
    when (wall-clock time, for the line that gives the count)."""

    __slots__ = ("dropped", "recent", "since")

    def __init__(self) -> None:
        self.recent: deque[float] = deque()
        self.dropped = 0
        self.since = 0.0


_budgets: dict[tuple[str, Hashable], _Budget] = {}
_BUDGETS_AT_MOST = 1024  # kinds with a budget; then every budget starts afresh
_said: set[Hashable] = set()


def security_event(kind: Kind, message: str) -> None:
    limited(security_log, kind, message)


def limited(
    log: logging.Logger,
    kind: Hashable,
    message: str,
    *,
    per_minute: int = _PER_MINUTE,
    level: int = logging.WARNING,
    counted: bool = True,
) -> bool:
    """Log ``message`` unless ``kind`` has had ``per_minute`` lines in the last minute;
    whether it was logged.

    The last line a budget allows says that more are counted (unless not ``counted``:
    a line whose next one the caller holds back itself); the next line after the minute
    gives their number, since when, so that it cannot read as one event."""
    budget = _budgets.get((log.name, kind))
    if budget is None:
        if len(_budgets) >= _BUDGETS_AT_MOST:
            _budgets.clear()
        budget = _budgets[log.name, kind] = _Budget()
    now = time.monotonic()
    recent = budget.recent
    while recent and now - recent[0] > 60:
        recent.popleft()
    if len(recent) >= per_minute:
        if not budget.dropped:
            budget.since = time.time()
        budget.dropped += 1
        return False
    recent.append(now)
    if budget.dropped:
        since = time.strftime("%H:%M:%S UTC", time.gmtime(budget.since))
        message = f"{message} ({budget.dropped} similar events not logged since {since})"
        budget.dropped = 0
    elif len(recent) == per_minute and counted:
        message = f"{message} (more like this within a minute are counted, not logged)"
    log.log(level, message)
    return True


def once(log: logging.Logger, what: Hashable, message: str) -> None:
    """Log ``message`` the first time ``what`` comes up in this process, within the
    budget of such lines: a client can make up new paths faster than anyone reads."""
    if what in _said:
        return
    if len(_said) >= _ONCE_AT_MOST:
        _said.clear()
    _said.add(what)
    limited(log, "once", message)


def forget() -> None:
    """Start every budget afresh, and say again what was said once (for tests)."""
    _budgets.clear()
    _said.clear()
