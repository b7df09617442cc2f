"""Saves of one session from one process take turns.

A compare-and-set save that loses a race merges and tries again. When many requests of
one session save at once in one process, all of them but one lose every round, and the
last would lose once per rival: with fifty parallel requests, 49 times. Taking turns
within the process leaves each save at most one lost race to its neighbours here, plus
those to other processes, and spares the store the wasted attempts.
"""

from __future__ import annotations

import asyncio

__all__ = ["Turns"]


class _Turn:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Turns:
    """One lock per key, kept only while someone holds or awaits it.

    A lock is bound to the event loop that first waits on it; since idle locks are
    dropped, a store whose client is used from one loop at a time never mixes loops.
    """

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: dict[str, _Turn] = {}

    async def take(self, key: str) -> _Turn:
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        turn.users += 1
        try:
            await turn.lock.acquire()
        except BaseException:
            self._leave(key, turn)
            raise
        return turn

    def give_back(self, key: str, turn: _Turn) -> None:
        turn.lock.release()
        self._leave(key, turn)

    def __len__(self) -> int:
        return len(self._turns)

    def _leave(self, key: str, turn: _Turn) -> None:
        turn.users -= 1
        if not turn.users:
            del self._turns[key]
