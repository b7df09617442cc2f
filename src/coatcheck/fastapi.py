"""FastAPI integration: typed dependencies and the session's ticket in the OpenAPI schema.

from coatcheck.fastapi import SessionDep, RequiredUser

@app.get("/me")
async def me(user: RequiredUser, session: SessionDep) -> dict[str, str]: ...
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, Generic, TypeVar, cast, get_args, get_origin

from .exceptions import MissingDependencyError

try:
    from fastapi import Depends, FastAPI, HTTPException, Security, params
    from fastapi.dependencies.utils import get_typed_signature
    from fastapi.openapi.models import APIKey, APIKeyIn
    from fastapi.security import SecurityScopes
    from fastapi.security.base import SecurityBase
    from pydantic import BaseModel
    from starlette.background import BackgroundTasks
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import HTTPConnection
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("fastapi", "fastapi") from exc

from ._context import (
    NOT_INSTALLED,
    current_cookie_name,
    current_session,
    current_token_header,
    described,
)
from ._models import check_model
from .config import Duration, SessionConfig, _seconds
from .middleware import SessionMiddleware
from .session import Session

__all__ = [
    "CSRFToken",
    "CurrentUser",
    "RequiredUser",
    "SessionCookie",
    "SessionDep",
    "SessionErrorBody",
    "csrf_token",
    "current_user",
    "dependency_of",
    "get_session",
    "not_authenticated",
    "not_recently_authenticated",
    "openapi",
    "recent_user",
    "require_user",
    "session_model",
    "session_responses",
    "user_loader",
]

M = TypeVar("M")
U = TypeVar("U")


class _Ticket(SecurityBase):
    """A dependency that also declares the session's ticket (its cookie, or the
    ``token_header``) as an ``apiKey`` scheme, so ``/docs`` shows it on the routes that
    use it, and a client generated from the schema sends the header there."""

    scheme_name = "coatcheck"

    @property
    def model(self) -> APIKey:  # type: ignore[override]
        # Built as FastAPI builds its own APIKeyCookie's, which Pydantic 1 and 2 both take.
        token_header = current_token_header()
        if token_header is None:
            return APIKey(
                **{"in": APIKeyIn.cookie},  # type: ignore[arg-type]  # "in" is a keyword
                name=current_cookie_name(),
                description="Opaque session ticket set by coatcheck at login (HttpOnly).",
            )
        # The header is what a generated client or the "Authorize" button of /docs can
        # send; a browser sends its cookie by itself, declared or not.
        return APIKey(
            **{"in": APIKeyIn.header},  # type: ignore[arg-type]
            name=token_header,
            description=(
                "Opaque session ticket, for clients that are not browsers: send any value "
                "(such as `new`) to start, and each new ticket comes back in this header. "
                f"Browsers carry it in the {current_cookie_name()} cookie instead."
            ),
        )


class _SessionTicket(_Ticket):
    """``await get_session()``: the request's session, loaded from the store on first use.

    As a dependency (:data:`SessionDep`) it declares the session's ticket, and
    ``app.dependency_overrides[get_session]`` replaces it, as for any dependency.
    """

    async def __call__(self) -> Session:
        session = current_session.get()
        if session is None:
            raise RuntimeError(_NO_SESSION)
        return await session.load()


class SessionCookie(_Ticket):
    """The logged-in user's id, as a dependency that also declares the session's ticket.

    One object does both because FastAPI charges for every dependency it resolves, on
    every request: a user check over the session and the scheme would cost it three.
    With ``required``, a request nobody is logged in on gets a 401.
    """

    def __init__(self, *, required: bool = False) -> None:
        self.required = required

    async def __call__(self) -> str | None:
        session = await get_session()
        if session.user_id is None and self.required:
            raise _nobody(session)
        return session.user_id


_NO_SESSION = (
    "no request session here: either coatcheck.SessionMiddleware is not installed "
    "on this app, or this code runs outside a request it serves (at start-up, in "
    "a script, in a task that outlived its request, or in a handler of unhandled "
    "exceptions, which Starlette runs once every middleware is done: there, "
    "Session.of(request) still reads what the request had)"
)


# An object rather than a function, so that the dependency that overrides replace is
# the one SessionDep declares: one dependency for FastAPI to resolve, not two.
get_session = _SessionTicket()


def openapi(app: FastAPI, *, config: SessionConfig | None = None) -> dict[str, Any]:
    """``app.openapi()``, with the session's scheme named as ``app``'s middleware has it.

    ``/openapi.json`` and ``/docs`` describe the cookie (or ``token_header``) of the
    middleware serving them. A script that exports the schema for a client generator
    runs outside any request, where plain ``app.openapi()`` can only assume the default
    cookie, and FastAPI then keeps that schema for ``/openapi.json`` too. This builds it
    afresh under the configuration given to ``app.add_middleware(SessionMiddleware)``
    (or a subclass of it), or under ``config``: that of an app ``app`` is mounted in,
    whose middleware serves it.
    """
    if config is None:
        config = _middleware_config(app)
    token = described.set(config)
    try:
        app.openapi_schema = None
        return app.openapi()
    finally:
        described.reset(token)


def _middleware_config(app: FastAPI) -> SessionConfig:
    for middleware in app.user_middleware:
        factory: object = middleware.cls
        if isinstance(factory, type) and issubclass(factory, SessionMiddleware):
            config = middleware.kwargs.get("config")
            if config is None and len(middleware.args) > 1:
                config = middleware.args[1]
            return config if isinstance(config, SessionConfig) else SessionConfig()
    raise RuntimeError(
        f"{NOT_INSTALLED}: for an app mounted in another that has it, pass that "
        "middleware's configuration, openapi(app, config=...)"
    )


# Declares the ticket: with a token_header, a generated client must send it on every
# route that uses the session, a login or a cart as much as a guarded page.
SessionDep = Annotated[Session, Security(get_session)]


def session_model(key: str, model: type[M]) -> Any:
    """A dependency that gives ``session[key]`` as an instance of the Pydantic ``model``:

        CartDep = Annotated[Cart, session_model("cart", Cart)]

    Change it in place and it is stored (see :meth:`Session.model`). The model is
    checked here, so one that cannot serve fails when the app is imported.
    """
    check_model(model)
    return Security(_TypedValue(key, model))


class _TypedValue(_Ticket):
    """``session[key]`` as a model: :func:`session_model`'s dependency, which declares
    the ticket as :data:`SessionDep` does, since its route uses the session too."""

    def __init__(self, key: str, kind: type[Any]) -> None:
        self.key, self.kind = key, kind  # not "model": SecurityBase's, the OpenAPI scheme

    async def __call__(self) -> Any:
        return (await get_session()).model(self.key, self.kind)


class _UserLoader(SessionCookie, Generic[U]):
    """The logged-in user as the app's own object, loaded by ``load``; see :func:`user_loader`."""

    def __init__(
        self, load: Callable[..., Awaitable[U | None]], dependencies: list[inspect.Parameter]
    ) -> None:
        super().__init__(required=True)
        self.load = load
        # What FastAPI reads to resolve the loader's own dependencies (a database
        # session), which reach ``load`` after the user id.
        self.__signature__ = inspect.Signature(dependencies)

    async def __call__(self, **dependencies: Any) -> U:  # type: ignore[override]
        session = await get_session()
        user_id = session.user_id
        if user_id is None:
            raise _nobody(session)
        user = await self.load(user_id, **dependencies)
        if user is None:
            # The account is gone or disabled: none of its sessions may outlive it. A
            # cookie store cannot reach the others; each gets this 401 when it comes.
            if session._persistence.stateless:
                session.destroy()
            else:
                await session.revoke_all()
            raise not_authenticated(ended=True)  # ended here and now
        return user


def user_loader(load: Callable[..., object]) -> Any:
    """A dependency that gives the logged-in user as your own object:

        async def load_user(user_id: str, db: DB) -> User | None: ...  # None: gone
        CurrentAccount = Annotated[User, user_loader(load_user)]

    Nobody logged in gets the 401 of :data:`require_user`. So does a session whose user
    ``load`` no longer finds (returns ``None``): every session of that user is ended
    on the spot, so a deleted or disabled account cannot stay signed in anywhere. The
    parameters after the user id are FastAPI dependencies, resolved as a route's are,
    so ``load`` shares the request's database session with the route. A plain ``def``
    loader runs in the thread pool, as FastAPI runs plain dependencies. Routes that use
    it show the session cookie in ``/docs``.
    """
    # Typed loosely: an async loader's type is a union mypy cannot solve against a
    # plain one's, and the dependency gives Any to the Annotated alias anyway.
    dependencies = _after_user_id(load)
    if _is_async(load):
        return Security(_UserLoader(cast("Callable[..., Awaitable[Any]]", load), dependencies))

    async def in_a_thread(user_id: str, **resolved: Any) -> Any:
        user = await run_in_threadpool(load, user_id, **resolved)
        if inspect.isawaitable(user):  # a plain function that hands back a coroutine
            return await user
        return user

    return Security(_UserLoader(in_a_thread, dependencies))


def _after_user_id(load: Callable[..., object]) -> list[inspect.Parameter]:
    """The parameters of ``load`` that FastAPI is to resolve: each one after the user id
    that is a dependency (``Depends``, ``Security``) or one of the objects FastAPI hands
    over (``Request``, ``SecurityScopes``…), as a keyword, the way it is then passed.

    Annotations are resolved as FastAPI resolves its own dependencies', one by one in
    ``load``'s module. A plain default is left to Python: as a query parameter, the
    client could set it. Any other parameter without a default is an error now, where
    each request would fail.
    """
    try:
        parameters = list(inspect.signature(load).parameters.values())  # left to pass
    except (TypeError, ValueError):  # a builtin without a signature: the user id only
        return []
    if isinstance(load, functools.partial):
        defined: Callable[..., object] = load.func
    else:
        defined = load if inspect.isroutine(load) else getattr(load, "__call__", load)  # noqa: B004
    with contextlib.suppress(TypeError, ValueError):
        typed = get_typed_signature(defined).parameters
        parameters = [
            p.replace(annotation=typed[p.name].annotation) if p.name in typed else p
            for p in parameters
        ]
    if not parameters or parameters[0].kind not in _POSITIONAL:
        raise TypeError(f"user_loader: {load!r} must take the user id as its first argument")
    resolved = []
    for parameter in parameters[1:]:
        if _resolved_by_fastapi(parameter):
            resolved.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        elif parameter.default is inspect.Parameter.empty and parameter.kind not in _SPREAD:
            raise TypeError(
                f"user_loader: parameter {parameter.name!r} of {load!r} is neither the"
                " user id nor a FastAPI dependency (Depends, Security, Request…)"
            )
    return resolved


def _resolved_by_fastapi(parameter: inspect.Parameter) -> bool:
    if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, *_SPREAD):
        return False
    if isinstance(parameter.default, params.Depends):
        return True
    annotation = parameter.annotation
    if get_origin(annotation) is Annotated:
        if any(isinstance(extra, params.Depends) for extra in get_args(annotation)[1:]):
            return True
        annotation = get_args(annotation)[0]
    return isinstance(annotation, type) and issubclass(annotation, _HANDED_OVER)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_SPREAD = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
# The objects FastAPI passes to a dependency by their type alone.
_HANDED_OVER = (HTTPConnection, Response, BackgroundTasks, SecurityScopes)


def _is_async(call: object) -> bool:
    """Whether ``call`` is an ``async def``, or an object whose ``__call__`` is one
    (a repository holding its connection pool), as FastAPI judges its dependencies."""
    if inspect.isroutine(call) or isinstance(call, functools.partial):
        return inspect.iscoroutinefunction(call)
    return inspect.iscoroutinefunction(getattr(call, "__call__", None))  # noqa: B004


class _RecentUser(SessionCookie):
    """The logged-in user's id, if they logged in recently; see :func:`recent_user`."""

    def __init__(self, max_age: int) -> None:
        super().__init__(required=True)
        self.max_age = max_age

    async def __call__(self) -> str:
        session = await get_session()
        user_id = session.user_id
        if user_id is None:
            raise _nobody(session)
        if not session.authenticated_within(self.max_age):
            raise not_recently_authenticated(self.max_age)
        return user_id


def recent_user(max_age: Duration = timedelta(minutes=10)) -> Any:
    """A dependency that gives the logged-in user's id, if they logged in at most
    ``max_age`` ago; for the actions an old or stolen cookie must not reach alone:

        RecentUser = Annotated[str, recent_user(timedelta(minutes=5))]

        @app.post("/account/email")
        async def change_email(user: RecentUser, ...): ...

    Nobody logged in gets the 401 of :data:`require_user`. A login older than
    ``max_age`` gets a 401 whose ``detail`` is ``"Recent sign-in required"`` and whose
    ``WWW-Authenticate`` challenge carries ``error="insufficient_user_authentication"``
    and ``max_age`` (as RFC 9470 has it): ask for the password again, then call
    ``session.login(user_id)``, which keeps the data and rotates the ID. A login
    adopted from Starlette's or starsessions' session never counts as recent.
    """
    return Security(_RecentUser(_seconds("max_age", max_age)))


# The cookie scheme rides on the user dependencies, the routes whose access it governs,
# rather than on every session read, where resolving it would cost a dependency each time.
current_user = SessionCookie()
"""The logged-in user's id, or ``None`` for an anonymous visitor."""

require_user = SessionCookie(required=True)
"""The logged-in user's id; anyone else gets a 401 with a JSON ``detail``."""


def dependency_of(alias: Any) -> Callable[..., Any]:
    """The callable FastAPI resolves for ``alias``, to key ``app.dependency_overrides``
    with in tests: ``dependency_of(CurrentAccount)`` for ``Annotated[User,
    user_loader(load_user)]``, as for ``recent_user()`` and ``session_model()``. Their
    dependency wraps the function you wrote, so overriding that function changes nothing.
    """
    for meta in getattr(alias, "__metadata__", (alias,)):
        dependency = getattr(meta, "dependency", None)
        if callable(dependency):
            return cast("Callable[..., Any]", dependency)
    raise TypeError(f"{alias!r} names no dependency: pass an Annotated alias or a Depends()")


def _nobody(session: Session) -> HTTPException:
    """The 401 for a request whose session has no user."""
    return not_authenticated(ended=session.ticket_ended)


def not_authenticated(detail: str = "Not authenticated", *, ended: bool = False) -> HTTPException:
    """The 401 that :func:`require_user` raises, for handlers that refuse by themselves.

    HTTP requires a ``WWW-Authenticate`` challenge on every 401; it names ``APIKey``,
    the scheme ``/docs`` shows for the cookie, as FastAPI's own ``APIKeyCookie`` does.
    Browsers show no password prompt for it. ``ended`` (pass ``session.ticket_ended``)
    adds RFC 6750's ``invalid_token`` for a ticket whose session ended, so a client
    can tell "signed out" from "never signed in".
    """
    challenge = "APIKey"
    if ended:
        challenge = 'APIKey error="invalid_token", error_description="the session has ended"'
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


def not_recently_authenticated(max_age: Duration) -> HTTPException:
    """The 401 that :func:`recent_user` raises for a login older than ``max_age``.

    Its challenge is RFC 9470's step-up one, ``error="insufficient_user_authentication"``
    with the ``max_age`` in seconds: the user is signed in, only not recently enough, so
    a client asks for the password again rather than signing them out.
    """
    seconds = _seconds("max_age", max_age)
    challenge = f'APIKey error="insufficient_user_authentication", max_age={seconds}'
    return HTTPException(
        status_code=401, detail="Recent sign-in required", headers={"WWW-Authenticate": challenge}
    )


class SessionErrorBody(BaseModel):
    """The body of coatcheck's own error answers, and of :func:`not_authenticated`'s."""

    detail: str


_ANSWERS: dict[int, str] = {
    401: "Nobody is signed in, or not recently enough for this route",
    403: "Refused: the CSRF check failed, or a login past the user's session limit",
    409: "The session was ended or changed by a parallel request: nothing was saved",
    413: "The session would grow past its size limit: nothing was saved",
    503: "The session store is unavailable: retry after Retry-After seconds",
}


def session_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for what coatcheck may answer instead of the route: pass
    them to ``FastAPI(responses=...)``, a router or a route, so that ``/openapi.json``
    declares them and a generated client can read them. All five without arguments; or
    only those named, say ``session_responses(401, 503)`` for a route that only reads.
    """
    unknown = sorted(set(statuses) - _ANSWERS.keys())
    if unknown:
        raise ValueError(f"coatcheck answers none of {unknown}: only {sorted(_ANSWERS)}")
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses or tuple(_ANSWERS):
        answers[status] = {"model": SessionErrorBody, "description": _ANSWERS[status]}
        if status == 503:
            answers[status]["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }
    return answers


async def csrf_token() -> str:
    """A fresh masked CSRF token, for clients that send neither ``Sec-Fetch-Site`` nor
    ``Origin``: expose it (``GET /csrf``) and have them send it as ``X-CSRF-Token``."""
    return (await get_session()).csrf_token()  # no SessionDep: one dependency, not two


CSRFToken = Annotated[str, Depends(csrf_token)]
CurrentUser = Annotated[str | None, Security(current_user)]
RequiredUser = Annotated[str, Security(require_user)]
