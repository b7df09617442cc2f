"""Stores that must start some of their state afresh in a process forked from one
that used them (gunicorn's ``--preload``, ``multiprocessing`` with fork)."""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class _Forked(Protocol):
    def _after_fork(self) -> None: ...


_WATCHED: weakref.WeakSet[_Forked] = weakref.WeakSet()


def after_fork(store: _Forked) -> None:
    """Call ``store._after_fork()`` in every child forked from this process from now on."""
    _WATCHED.add(store)


def _in_child() -> None:
    for store in list(_WATCHED):
        store._after_fork()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_in_child)
