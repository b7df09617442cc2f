"""Errors raised by coatcheck.

The tree is shallow on purpose::

    CoatcheckError
    ├── ConfigurationError        bad settings, raised at start-up
    ├── MissingDependencyError    an optional extra is not installed (also an ImportError)
    ├── SessionNotLoadedError     session data touched before it was loaded
    ├── ResponseStartedError      a new cookie needed once the response has started
    ├── SerializationError        a value cannot be stored as JSON
    ├── SessionTooLargeError      the encoded session passes the size limit (becomes a 413)
    ├── SessionEndedError         another request ended the session first (becomes a 409)
    ├── SessionConflictError      parallel saves kept colliding past the retries (a 409)
    ├── SessionLimitError         a login refused at max_sessions_per_user (becomes a 403)
    ├── NotSupportedError         the store cannot do that (the cookie store keeps no index)
    └── StoreError                the store failed (a 503, logged as an error)
        └── StoreUnavailableError the store is down, locked or timed out (becomes a 503)
"""

from __future__ import annotations

from typing import Any

# Errors that format their message from their arguments say how to make them again
# (``__reduce__``): raised in a worker process or a task queue, they are pickled.


class CoatcheckError(Exception):
    """Base class of every error coatcheck raises on purpose."""


class ConfigurationError(CoatcheckError, ValueError):
    """Raised when settings contradict each other or a store URL cannot be used."""


class MissingDependencyError(CoatcheckError, ImportError):
    """Raised when a module needs an optional extra that is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'coatcheck[{extra}]'"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.package, self.extra), self.__dict__


class SessionNotLoadedError(CoatcheckError, RuntimeError):
    """Raised when a lazy session is read synchronously before anything loaded it."""


class ResponseStartedError(CoatcheckError, RuntimeError):
    """Raised by ``login()`` and ``regenerate()`` once the response has started (in a
    streaming body, a background task, a websocket after its handshake): the new
    cookie could no longer reach the browser, which would be left holding a dead one.
    ``save()`` raises it then for a session that only a new cookie could carry."""


class SerializationError(CoatcheckError, TypeError):
    """Raised at save time when a session value cannot be encoded; names the key."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"session value under key {key!r} cannot be stored as JSON: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.key, self.reason), self.__dict__


class SessionTooLargeError(CoatcheckError):
    """Raised at save time when the encoded session is over ``max_session_bytes``.

    Nothing is written, so the stored session stays as it was; the answer is a 413.
    """

    def __init__(self, size: int, limit: int, message: str | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            message or f"session data is {size} bytes, over the limit of {limit} bytes"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.size, self.limit, str(self)), self.__dict__


class SessionEndedError(CoatcheckError):
    """Raised at save time when a logout or revocation ended the session mid-request.

    The change is not written: a session that was ended must stay ended.
    """


class SessionConflictError(CoatcheckError):
    """Raised when a save kept losing races to parallel saves of the same session, or
    found it saved meanwhile with data this process cannot decode (sealed under a key it
    does not hold yet, during a key rotation).

    Nothing was written; the request is answered with a 409 so the client can retry.
    """


class SessionLimitError(CoatcheckError):
    """Raised at save time when a login would take its user past ``max_sessions_per_user``
    under ``at_session_limit="refuse_login"``.

    Nothing of the login is kept: the answer is a 403 and the browser keeps the session
    it had. :meth:`Session.can_login` asks beforehand, for an app that words it itself.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"signed in on too many devices: at most {limit} at once; "
            "sign out on another device first"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.limit,), self.__dict__


class NotSupportedError(CoatcheckError, NotImplementedError):
    """Raised when the app asks a store for what it cannot do by design, such as the
    device list of a store that keeps sessions in the browser's cookie: a mistake in
    the app, so it is not turned into a response."""


class StoreError(CoatcheckError):
    """Raised when a session store fails in a way the caller cannot fix."""


class StoreUnavailableError(StoreError):
    """Raised when the store is unreachable, locked or too slow; answered with a 503."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class StoreFullError(StoreUnavailableError):
    """Raised when the store refuses to grow (Redis at ``maxmemory`` under
    ``noeviction``): what adds data waits for room, while logouts and revocations,
    which free it, still go through."""
