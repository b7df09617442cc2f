"""OpenTelemetry: session events, and how long the store takes and how it fails.

    from coatcheck.otel import SessionTelemetry

    telemetry = SessionTelemetry()  # the global providers, or meter_provider=, tracer_provider=
    app.add_middleware(
        SessionMiddleware, store=telemetry.instrument(store), events=[telemetry.record_event]
    )

Two instruments, named after the OpenTelemetry conventions for database clients:

- ``coatcheck.session.events`` (counter): logins, logouts, revocations (by the number
  of sessions ended), expiries, CSRF rejections... by ``coatcheck.event``;
- ``coatcheck.store.duration`` (histogram, seconds): each store call, by
  ``coatcheck.store.operation`` and ``coatcheck.store`` (the store's class), with
  ``error.type`` set to the error's class name when the call failed, so an outage
  (``StoreUnavailableError``, or ``StoreFullError`` for a full Redis) shows apart from
  a merge that gave up.

Each store call is also a client span, ``coatcheck.store <operation>``, with the same
attributes, so a slow request's trace shows its session store; a failed call records
its error and sets the span's status. No attribute holds a user id or a session's id:
metrics are for counting, and their attributes must stay few. Needs the ``otel`` extra
(``opentelemetry-api``); the app picks the SDK and exporters.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from .exceptions import MissingDependencyError

try:
    from opentelemetry.metrics import Histogram, MeterProvider, get_meter
    from opentelemetry.trace import SpanKind, StatusCode, Tracer, TracerProvider, get_tracer
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise MissingDependencyError("opentelemetry-api", "otel") from exc

from .events import SessionEvent
from .stores.base import Merge, SessionRecord, Store

__all__ = ["SessionTelemetry"]

T = TypeVar("T")

# Methods a store may have (see coatcheck.stores.base: creator_of, mover_of, follower_of).
_OPTIONAL = ("create", "moved_at", "moved_to")
# Seconds. The SDK's default boundaries (0, 5, 10, 25... meant for milliseconds) would
# put every call, from a 50 µs memory load to a 4 s timeout, in the first bucket.
_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class SessionTelemetry:
    """The instruments and the tracer, and the two ways in: an event hook and a store
    wrapper."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        from . import __version__

        meter = get_meter("coatcheck", __version__, meter_provider=meter_provider)
        self._tracer = get_tracer("coatcheck", __version__, tracer_provider=tracer_provider)
        self._events = meter.create_counter(
            "coatcheck.session.events",
            unit="{event}",
            description="Session life-cycle events, by kind",
        )
        histogram = partial(
            meter.create_histogram,
            "coatcheck.store.duration",
            unit="s",
            description="Duration of session store calls",
        )
        try:
            self._duration = histogram(explicit_bucket_boundaries_advisory=_BUCKETS)
        except TypeError:  # opentelemetry-api before 1.30 takes no advice
            self._duration = histogram()

    async def record_event(self, event: SessionEvent) -> None:
        """An event hook for ``SessionMiddleware(events=[...])``."""
        self._events.add(event.count, {"coatcheck.event": event.kind})

    def instrument(self, store: Store) -> Store:
        """``store``, with every call timed and traced. Other attributes pass through."""
        return _MeteredStore(store, self._duration, self._tracer)


class _MeteredStore:
    """A store whose calls are timed and traced by :class:`SessionTelemetry`."""

    def __init__(self, inner: Store, duration: Histogram, tracer: Tracer) -> None:
        self.inner = inner
        self._duration = duration
        self._tracer = tracer
        self._store = type(inner).__name__

    def __getattr__(self, name: str) -> Any:
        # The store's own attributes (a Redis client, a SQLite path) stay reachable.
        if name == "inner":  # not set yet: a copy or an unpickling is making this one
            raise AttributeError(name)
        value = getattr(self.inner, name)
        if name in _OPTIONAL and value is not None:  # timed where the store has them
            return partial(self._optional, name, value)
        return value

    async def _optional(self, name: str, method: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self._timed(name, method(*args))

    def __repr__(self) -> str:
        return f"<timed {self.inner!r}>"

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        attributes = {"coatcheck.store.operation": operation, "coatcheck.store": self._store}
        with self._tracer.start_as_current_span(
            f"coatcheck.store {operation}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            start = time.perf_counter()
            try:
                return await call
            except BaseException as exc:
                attributes["error.type"] = type(exc).__name__
                span.set_attribute("error.type", attributes["error.type"])
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, str(exc))
                raise
            finally:
                self._duration.record(time.perf_counter() - start, attributes)

    async def load(self, key: str, now: float) -> SessionRecord | None:
        return await self._timed("load", self.inner.load(key, now))

    async def save(
        self,
        record: SessionRecord,
        *,
        replaces: str | None = None,
        expected_version: int | None = None,
        merge: Merge | None = None,
    ) -> bool:
        call = self.inner.save(
            record, replaces=replaces, expected_version=expected_version, merge=merge
        )
        return await self._timed("save", call)

    async def delete(self, key: str) -> None:
        await self._timed("delete", self.inner.delete(key))

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        return await self._timed("list_user", self.inner.list_user(user_id, now))

    async def delete_user(
        self, user_id: str, *, keep: str | None = None, now: float | None = None
    ) -> int:
        call = self.inner.delete_user(user_id, keep=keep, now=now)
        return await self._timed("delete_user", call)

    async def delete_all(self, now: float) -> int:
        return await self._timed("delete_all", self.inner.delete_all(now))

    async def purge_expired(self, now: float) -> int:
        return await self._timed("purge_expired", self.inner.purge_expired(now))

    async def count(self, now: float) -> int:
        return await self._timed("count", self.inner.count(now))

    async def aclose(self) -> None:
        await self.inner.aclose()
