"""A tiny Starlette app exercising every session operation, for middleware tests."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from coatcheck import SessionConfig, SessionMiddleware, Store
from coatcheck.session import Session


async def _session(request: Request) -> Session:
    return await Session.of(request).load()


def _state(session: Session) -> dict[str, Any]:
    return {"data": dict(session), "user": session.user_id}


async def untouched(request: Request) -> Response:
    return PlainTextResponse("hello")


async def read(request: Request) -> Response:
    return JSONResponse(_state(await _session(request)))


async def write(request: Request) -> Response:
    session = await _session(request)
    session["n"] = session.get("n", 0) + 1
    return JSONResponse(_state(session))


async def append(request: Request) -> Response:
    session = await _session(request)
    session.setdefault("cart", []).append(request.query_params.get("item", "apple"))
    return JSONResponse(_state(session))


async def login(request: Request) -> Response:
    session = await _session(request)
    session.login(
        request.query_params.get("user", "alice"), remember="remember" in request.query_params
    )
    return JSONResponse(_state(session))


async def can_login(request: Request) -> Response:
    session = await _session(request)
    return JSONResponse({"can_login": await session.can_login(request.query_params["user"])})


async def logout(request: Request) -> Response:
    (await _session(request)).logout()
    return Response(status_code=204)


async def regenerate(request: Request) -> Response:
    (await _session(request)).regenerate()
    return JSONResponse({})


async def clear(request: Request) -> Response:
    (await _session(request)).clear()
    return JSONResponse({})


async def bad_value(request: Request) -> Response:
    session = await _session(request)
    session["fine"] = "still fine"
    session["when"] = datetime.now(timezone.utc)
    return JSONResponse({})


async def crash(request: Request) -> Response:
    session = await _session(request)
    session["n"] = 1000
    return PlainTextResponse("failed", status_code=500)


async def sync_read(request: Request) -> Response:
    """Code written for Starlette's SessionMiddleware: plain synchronous request.session."""
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JSONResponse({"visits": request.session["visits"]})


async def cached(request: Request) -> Response:
    session = await _session(request)
    session["n"] = 1
    return JSONResponse({}, headers={"Cache-Control": "public, max-age=600"})


async def slow(request: Request) -> Response:
    """Loads, then waits for the test to let it finish: a request in flight."""
    session = await _session(request)
    gate = request.app.state.gate
    gate.loaded.set()
    await gate.release.wait()
    if request.method == "POST":
        session["late"] = True
    return JSONResponse(_state(session))


async def ws(websocket: WebSocket) -> None:
    session = websocket.scope["session"]
    assert isinstance(session, Session)
    await session.load()
    session["ws"] = session.get("ws", 0) + 1
    await websocket.accept()
    await websocket.send_json(_state(session))
    session["after_accept"] = True
    await websocket.close()


async def remember(request: Request) -> Response:
    session = await _session(request)
    session.remember = request.query_params.get("on", "1") == "1"
    return JSONResponse(_state(session))


async def revoke_others(request: Request) -> Response:
    return JSONResponse({"revoked": await (await _session(request)).revoke_others()})


def make_app(store: Store, config: SessionConfig | None = None, **options: Any) -> Starlette:
    routes = [
        Route("/untouched", untouched),
        Route("/read", read),
        Route("/write", write, methods=["POST"]),
        Route("/append", append, methods=["POST"]),
        Route("/login", login, methods=["POST"]),
        Route("/can-login", can_login),
        Route("/logout", logout, methods=["POST"]),
        Route("/revoke-others", revoke_others, methods=["POST"]),
        Route("/regenerate", regenerate, methods=["POST"]),
        Route("/remember", remember, methods=["POST"]),
        Route("/clear", clear, methods=["POST"]),
        Route("/bad-value", bad_value, methods=["POST"]),
        Route("/crash", crash, methods=["POST"]),
        Route("/legacy/visits", sync_read),
        Route("/cached", cached, methods=["POST"]),
        Route("/slow", slow, methods=["GET", "POST"]),
        WebSocketRoute("/ws", ws),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SessionMiddleware, store=store, config=config, **options)
    return app
