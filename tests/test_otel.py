"""OpenTelemetry metrics and spans, read back through the real SDK's in-memory reader
and exporter."""

from __future__ import annotations

import copy
import time
from inspect import signature
from typing import Any

import httpx
import pytest
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette

from coatcheck import MemoryStore, SessionRecord, Store
from coatcheck.otel import SessionTelemetry
from coatcheck.stores.base import creator_of
from coatcheck.stores.redis import RedisStore

from . import apps
from .conftest import client_for
from .redis_servers import free_port

pytestmark = pytest.mark.anyio

NAME = "__Host-session"


def make_app(store: Store, telemetry: SessionTelemetry) -> Starlette:
    return apps.make_app(telemetry.instrument(store), events=[telemetry.record_event])


def points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    """(attributes, data point) of every point of the metric ``name``."""
    data = reader.get_metrics_data()
    assert data is not None
    return [
        (dict(point.attributes or {}), point)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def cookie_of(response: httpx.Response) -> dict[str, str]:
    value = response.cookies.get(NAME)
    assert value, response.headers
    return {"cookie": f"{NAME}={value}"}


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(reader: InMemoryMetricReader, spans: InMemorySpanExporter) -> SessionTelemetry:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    return SessionTelemetry(
        meter_provider=MeterProvider(metric_readers=[reader]), tracer_provider=tracer_provider
    )


async def test_events_are_counted_by_kind(
    reader: InMemoryMetricReader, telemetry: SessionTelemetry
) -> None:
    async with client_for(make_app(MemoryStore(), telemetry)) as client:
        phone = cookie_of(await client.post("/login"))
        laptop = cookie_of(await client.post("/login"))
        tablet = cookie_of(await client.post("/login"))
        assert (await client.post("/revoke-others", headers=tablet)).json() == {"revoked": 2}
        await client.post("/logout", headers=tablet)
        assert (await client.get("/read", headers=phone)).json()["user"] is None
        assert (await client.get("/read", headers=laptop)).json()["user"] is None
    counts = {
        attributes["coatcheck.event"]: point.value
        for attributes, point in points(reader, "coatcheck.session.events")
    }
    # A revocation counts the sessions it ended.
    assert counts == {"created": 3, "logged_in": 3, "revoked": 2, "logged_out": 1}


async def test_store_calls_are_timed_by_operation_and_store(
    reader: InMemoryMetricReader, telemetry: SessionTelemetry
) -> None:
    async with client_for(make_app(MemoryStore(), telemetry)) as client:
        headers = cookie_of(await client.post("/login"))
        for _ in range(3):
            await client.get("/read", headers=headers)
    found = {
        attributes["coatcheck.store.operation"]: point
        for attributes, point in points(reader, "coatcheck.store.duration")
    }
    # The login sent no cookie, so it loaded nothing: three loads, one save.
    assert {op: point.count for op, point in found.items()} == {"load": 3, "save": 1}
    for attributes, point in points(reader, "coatcheck.store.duration"):
        assert attributes["coatcheck.store"] == "MemoryStore"
        assert "error.type" not in attributes
        assert 0 < point.sum < 1
        # Counting needs few attributes, and no credential or user may be one.
        assert set(attributes) == {"coatcheck.store.operation", "coatcheck.store"}


async def test_store_call_durations_fall_in_buckets_of_their_size(
    reader: InMemoryMetricReader, telemetry: SessionTelemetry
) -> None:
    """In seconds, with boundaries for seconds: the SDK's defaults (0, 5, 10...) are
    for milliseconds, and would put every call, fast or timed out, in one bucket."""
    async with client_for(make_app(MemoryStore(), telemetry)) as client:
        headers = cookie_of(await client.post("/login"))
        for _ in range(5):
            await client.get("/read", headers=headers)
    (load,) = [
        point
        for attributes, point in points(reader, "coatcheck.store.duration")
        if attributes["coatcheck.store.operation"] == "load"
    ]
    if "explicit_bucket_boundaries_advisory" not in signature(Meter.create_histogram).parameters:
        # opentelemetry-api before 1.30 (make test-oldest) takes no advice: timed all
        # the same, in the SDK's buckets.
        assert load.count == 5
        return
    bounds = list(load.explicit_bounds)
    assert bounds[0] <= 0.0001
    assert 1.0 in bounds
    assert bounds[-1] == 10.0
    # Memory loads take microseconds: every one in a bucket that ends below 1 ms.
    filled = [bound for bound, count in zip(bounds, load.bucket_counts, strict=False) if count]
    assert sum(load.bucket_counts) == 5
    assert load.bucket_counts[-1] == 0  # past the last bound
    assert filled, (bounds, list(load.bucket_counts))
    assert max(filled) <= 0.001, (bounds, list(load.bucket_counts))


async def test_an_outage_is_timed_with_its_error_type(
    reader: InMemoryMetricReader, telemetry: SessionTelemetry
) -> None:
    # A real client, refused by a port nobody listens on.
    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        async with client_for(make_app(store, telemetry)) as client:
            response = await client.post("/login")
        assert response.status_code == 503
        assert response.headers["retry-after"]
    finally:
        await store.aclose()
    failures = [
        attributes
        for attributes, _ in points(reader, "coatcheck.store.duration")
        if "error.type" in attributes
    ]
    assert failures == [
        {
            "coatcheck.store.operation": "save",
            "coatcheck.store": "RedisStore",
            "error.type": "StoreUnavailableError",
        }
    ]


async def test_the_instrumented_store_is_a_store_that_lets_its_own_attributes_through(
    telemetry: SessionTelemetry,
) -> None:
    inner = MemoryStore(max_entries=7)
    store = telemetry.instrument(inner)
    assert isinstance(store, Store)
    assert store.max_entries == 7  # type: ignore[attr-defined]
    assert await store.count(0) == 0
    # Copied, it is the same store (its __getattr__ once recursed without ``inner``).
    assert copy.copy(store).max_entries == 7  # type: ignore[attr-defined]
    assert repr(store) == "<timed <MemoryStore 0 of at most 7 records>>"
    await store.aclose()


async def test_each_store_call_is_a_client_span_and_a_failure_marks_it(
    telemetry: SessionTelemetry, spans: InMemorySpanExporter
) -> None:
    async with client_for(make_app(MemoryStore(), telemetry)) as client:
        headers = cookie_of(await client.post("/login"))
        await client.get("/read", headers=headers)
    finished = spans.get_finished_spans()
    assert [span.name for span in finished] == ["coatcheck.store save", "coatcheck.store load"]
    for span in finished:
        assert span.kind is SpanKind.CLIENT
        assert span.status.status_code is StatusCode.UNSET
        assert dict(span.attributes or {})["coatcheck.store"] == "MemoryStore"
    spans.clear()

    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    try:
        async with client_for(make_app(store, telemetry)) as client:
            assert (await client.post("/login")).status_code == 503
    finally:
        await store.aclose()
    (failed,) = spans.get_finished_spans()
    assert failed.name == "coatcheck.store save"
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "StoreUnavailableError"
    assert [event.name for event in failed.events] == ["exception"]


async def test_the_optional_create_is_timed_where_the_store_has_one(
    reader: InMemoryMetricReader, telemetry: SessionTelemetry
) -> None:
    """An import's first write goes through ``create()``: it is a store call like any."""
    store = telemetry.instrument(MemoryStore())
    create = creator_of(store)
    assert create is not None
    now = time.time()
    record = SessionRecord(
        key="c" * 64,
        public_id="createdpublicid0",
        user_id=None,
        data=b"{}",
        created_at=now,
        last_seen_at=now,
        expires_at=now + 60,
    )
    assert await create(record)
    assert not await create(record)  # held by a live record now
    found = [
        (attributes["coatcheck.store.operation"], point.count)
        for attributes, point in points(reader, "coatcheck.store.duration")
    ]
    assert found == [("create", 2)]

    class WithoutCreate(MemoryStore):
        create = None  # type: ignore[assignment]

    assert creator_of(telemetry.instrument(WithoutCreate())) is None
