"""FastAPI integration: typed dependencies and the cookie in the OpenAPI schema.

from coatcheck.fastapi import SessionDep, RequiredUser

@app.get("/me")
async def me(user: RequiredUser, session: SessionDep) -> dict[str, str]: ...
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from .exceptions import MissingDependencyError

try:
    from fastapi import Depends, HTTPException, Security
    from fastapi.openapi.models import APIKey, APIKeyIn
    from fastapi.security.base import SecurityBase
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("fastapi", "fastapi") from exc

from ._context import current_cookie_name, current_session
from ._models import check_model
from .session import Session

__all__ = [
    "CSRFToken",
    "CurrentUser",
    "RequiredUser",
    "SessionCookie",
    "SessionDep",
    "csrf_token",
    "current_user",
    "get_session",
    "not_authenticated",
    "require_user",
    "session_model",
]

M = TypeVar("M")


class SessionCookie(SecurityBase):
    """The logged-in user's id, as a dependency that also declares the session cookie
    as an ``apiKey`` scheme, so ``/docs`` shows it on the routes it guards.

    One object does both because FastAPI charges for every dependency it resolves, on
    every request: a user check over the session and the scheme would cost it three.
    With ``required``, a request nobody is logged in on gets a 401.
    """

    scheme_name = "coatcheck"

    def __init__(self, *, required: bool = False) -> None:
        self.required = required

    @property
    def model(self) -> APIKey:  # type: ignore[override]
        # Built as FastAPI builds its own APIKeyCookie's, which Pydantic 1 and 2 both take.
        return APIKey(
            **{"in": APIKeyIn.cookie},  # type: ignore[arg-type]  # "in" is a keyword
            name=current_cookie_name(),
            description="Opaque session ticket set by coatcheck at login (HttpOnly).",
        )

    async def __call__(self) -> str | None:
        session = await get_session()
        if session.user_id is None and self.required:
            raise not_authenticated()
        return session.user_id


async def get_session() -> Session:
    """The request's session, loaded from the store on first use."""
    session = current_session.get()
    if session is None:
        raise RuntimeError("coatcheck.SessionMiddleware is not installed on this app")
    return await session.load()


SessionDep = Annotated[Session, Depends(get_session)]


def session_model(key: str, model: type[M]) -> Any:
    """A dependency that gives ``session[key]`` as an instance of the Pydantic ``model``:

        CartDep = Annotated[Cart, session_model("cart", Cart)]

    Change it in place and it is stored (see :meth:`Session.model`). The model is
    checked here, so one that cannot serve fails when the app is imported.
    """
    check_model(model)

    async def typed_value() -> M:
        return (await get_session()).model(key, model)

    return Depends(typed_value)


# The cookie scheme rides on the user dependencies, the routes whose access it governs,
# rather than on every session read, where resolving it would cost a dependency each time.
current_user = SessionCookie()
"""The logged-in user's id, or ``None`` for an anonymous visitor."""

require_user = SessionCookie(required=True)
"""The logged-in user's id; anyone else gets a 401 with a JSON ``detail``."""


def not_authenticated(detail: str = "Not authenticated") -> HTTPException:
    """The 401 that :func:`require_user` raises, for handlers that refuse by themselves.

    HTTP requires a ``WWW-Authenticate`` challenge on every 401; it names ``APIKey``,
    the scheme ``/docs`` shows for the cookie, as FastAPI's own ``APIKeyCookie`` does.
    Browsers show no password prompt for it.
    """
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "APIKey"})


async def csrf_token() -> str:
    """A fresh masked CSRF token, for clients that send neither ``Sec-Fetch-Site`` nor
    ``Origin``: expose it (``GET /csrf``) and have them send it as ``X-CSRF-Token``."""
    return (await get_session()).csrf_token()  # no SessionDep: one dependency, not two


CSRFToken = Annotated[str, Depends(csrf_token)]
CurrentUser = Annotated[str | None, Security(current_user)]
RequiredUser = Annotated[str, Security(require_user)]
