"""The middleware among the others a FastAPI app stacks: Starlette's BaseHTTPMiddleware
(which runs the app in a task of its own) and GZip, on either side of it, with a mounted
sub-application and a synchronous endpoint (run in a worker thread) using the session."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request, Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.gzip import GZipMiddleware

from coatcheck import MemoryStore, SessionConfig, SessionMiddleware
from coatcheck.fastapi import SessionDep, get_session

from .conftest import client_for

pytestmark = pytest.mark.anyio

NAME = SessionConfig().cookie.name
# Long enough for GZip's minimum size, so a compressed body proves it ran.
PADDING = "x" * 600


class PassThrough(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


def stacked(layers: list[str]) -> FastAPI:
    """An app whose middleware are added in ``layers`` order (the last is outermost)."""
    app = FastAPI()

    @app.post("/count")
    async def count(session: SessionDep) -> dict[str, object]:
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"], "padding": PADDING}

    @app.post("/count-in-a-thread")
    def count_in_a_thread(session: SessionDep) -> dict[str, object]:
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"], "padding": PADDING}

    mounted = FastAPI()

    @mounted.post("/count")
    async def count_in_a_mounted_app() -> dict[str, object]:
        session = await get_session()
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"], "padding": PADDING}

    app.mount("/mounted", mounted)
    for layer in layers:
        if layer == "coatcheck":
            app.add_middleware(SessionMiddleware, store=MemoryStore(), config=SessionConfig())
        elif layer == "base":
            app.add_middleware(PassThrough)
        else:
            app.add_middleware(GZipMiddleware, minimum_size=100)
    return app


@pytest.mark.parametrize(
    "layers",
    [
        ["base", "coatcheck"],
        ["coatcheck", "base"],
        ["gzip", "coatcheck"],
        ["coatcheck", "gzip"],
        ["base", "gzip", "coatcheck", "base"],
    ],
    ids="-".join,
)
async def test_every_kind_of_endpoint_keeps_one_session(layers: list[str]) -> None:
    async with client_for(stacked(layers), headers={"accept-encoding": "gzip"}) as client:
        first = await client.post("/count")
        ticket = first.cookies[NAME]
        cookie = {"cookie": f"{NAME}={ticket}"}
        counts = [first.json()["n"]]
        for path in ("/count-in-a-thread", "/mounted/count", "/count"):
            response = await client.post(path, headers=cookie)
            assert response.status_code == 200
            assert NAME not in response.cookies  # the same session, carried on
            counts.append(response.json()["n"])
    assert counts == [1, 2, 3, 4]
    assert (first.headers.get("content-encoding") == "gzip") == ("gzip" in layers)
