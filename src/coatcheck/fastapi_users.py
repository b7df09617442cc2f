"""fastapi-users on coatcheck's sessions: its users, passwords and routers stay, and
the login becomes a server-side session in place of its cookie, JWT or Redis tokens.

    from coatcheck.fastapi_users import EndSessionsMixin, session_backend

    class UserManager(EndSessionsMixin, UUIDIDMixin, BaseUserManager[User, uuid.UUID]): ...

    backend = session_backend()
    fastapi_users = FastAPIUsers[User, uuid.UUID](get_user_manager, [backend])
    app.include_router(fastapi_users.get_auth_router(backend), prefix="/auth")

``fastapi_users.current_user()`` then reads the user from the session, ``/auth/login``
logs in with :meth:`Session.login` (a new session ID, the cart kept) and
``/auth/logout`` ends the session on the server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Generic

from .exceptions import MissingDependencyError, SessionLimitError

try:
    from fastapi import Request, Response, status
    from fastapi_users import exceptions, models
    from fastapi_users.authentication import AuthenticationBackend
    from fastapi_users.manager import BaseUserManager
    from fastapi_users.openapi import OpenAPIResponseType
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("fastapi_users", "fastapi-users") from exc

from ._context import current_session
from .fastapi import current_user, get_session
from .session import Session
from .stores.base import cookie_sealer_of

if TYPE_CHECKING:
    from fastapi.security.base import SecurityBase

    from .stores.base import Store

__all__ = ["EndSessionsMixin", "SessionStrategy", "SessionTransport", "session_backend"]

logger = logging.getLogger("coatcheck")


class SessionTransport:
    """The login's ticket travels in coatcheck's cookie (or its ``token_header``), which
    the middleware sets and clears: login and logout answer 204, as fastapi-users'
    ``CookieTransport`` does. The "token" fastapi-users passes around is the session's
    user id, None when nobody is logged in, so its ``current_user`` asks the strategy
    only then; ``/docs`` shows coatcheck's scheme."""

    scheme: SecurityBase = current_user

    async def get_login_response(self, token: str) -> Response:
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    async def get_logout_response(self) -> Response:
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @staticmethod
    def get_openapi_login_responses_success() -> OpenAPIResponseType:
        return {status.HTTP_204_NO_CONTENT: {"model": None}}

    @staticmethod
    def get_openapi_logout_responses_success() -> OpenAPIResponseType:
        return {status.HTTP_204_NO_CONTENT: {"model": None}}


class SessionStrategy(Generic[models.UP, models.ID]):
    """The user of the request's session, loaded by fastapi-users' user manager.

    A session whose user is gone or deactivated ends, with every other session of that
    user, as with :func:`coatcheck.fastapi.user_loader`: an account removed or disabled
    in the database by hand cannot stay signed in anywhere.
    """

    async def read_token(
        self, token: str | None, user_manager: BaseUserManager[models.UP, models.ID]
    ) -> models.UP | None:
        session = await get_session()
        user_id = session.user_id
        if token is None or user_id is None:
            return None
        try:
            parsed = user_manager.parse_id(user_id)
        except exceptions.InvalidID:
            return None  # a login this user manager cannot name: another app's, say
        try:
            user = await user_manager.get(parsed)
        except exceptions.UserNotExists:
            user = None
        if user is None or not user.is_active:
            await _end_all(session, user_id)
            return None
        return user

    async def write_token(self, user: models.UP) -> str:
        session = await get_session()
        user_id = str(user.id)
        if not await session.can_login(user_id):
            # Refused here, not at the save: fastapi-users' on_after_login (a last-login
            # stamp, a "new sign-in" mail) must run only for a login that stands.
            limit = session._persistence.config.max_sessions_per_user
            assert limit is not None
            raise SessionLimitError(limit)
        # A login form's: it chooses remember-me again (off, until on_after_login sets
        # it), rather than keep what a login of the same user here had.
        session.login(user_id, remember=False)
        return ""  # no token: the middleware sends the new ticket

    async def destroy_token(self, token: str, user: models.UP) -> None:
        (await get_session()).logout()


def _strategy() -> SessionStrategy[Any, Any]:
    return SessionStrategy()


def session_backend(name: str = "coatcheck") -> AuthenticationBackend[Any, Any]:
    """An ``AuthenticationBackend`` for ``FastAPIUsers``: its login, logout and
    ``current_user`` on the session of coatcheck's middleware, which the app must have."""
    return AuthenticationBackend(name, SessionTransport(), _strategy)


class EndSessionsMixin(Generic[models.UP, models.ID]):
    """A user manager mixin that ends a user's sessions when their password is reset
    or changed, and when the account is deactivated or deleted, as OWASP asks.

    A change of the user's own password keeps the session it was made from and ends
    the others; every other case ends them all, this browser's too when it is that
    user's. It acts after fastapi-users' ``reset_password``, ``update`` and ``delete``,
    so hooks (``on_after_update``…) that an app overrides without ``super()`` do not
    turn it off. Outside a request (a script, a worker) it needs ``session_store``,
    the store given to the middleware.
    """

    session_store: Store | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        order = cls.__mro__
        if BaseUserManager in order and order.index(BaseUserManager) < order.index(
            EndSessionsMixin
        ):
            # Its methods would be BaseUserManager's, and no session would ever end.
            raise TypeError(
                f"{cls.__name__}: list EndSessionsMixin before BaseUserManager in its bases"
            )

    async def reset_password(
        self, token: str, password: str, request: Request | None = None
    ) -> models.UP:
        user: models.UP = await super().reset_password(token, password, request)  # type: ignore[misc]
        await self._end_sessions(user, request, "a password reset", keep_own=False)
        return user

    async def update(
        self,
        user_update: Any,
        user: models.UP,
        safe: bool = False,
        request: Request | None = None,
    ) -> models.UP:
        updated: models.UP = await super().update(user_update, user, safe, request)  # type: ignore[misc]
        if getattr(user_update, "password", None) is not None:
            await self._end_sessions(updated, request, "a password change", keep_own=True)
        elif not updated.is_active:
            await self._end_sessions(updated, request, "a deactivation", keep_own=False)
        return updated

    async def delete(self, user: models.UP, request: Request | None = None) -> None:
        await super().delete(user, request)  # type: ignore[misc]
        await self._end_sessions(user, request, "a deletion", keep_own=False)

    async def _end_sessions(
        self, user: models.UP, request: Request | None, reason: str, *, keep_own: bool
    ) -> None:
        user_id = str(user.id)
        session = _session_of(request)
        if session is None:
            store = self.session_store
            if store is None or cookie_sealer_of(store) is not None:
                advice = (
                    "the cookie store reaches no browser from here"
                    if store is not None
                    else "set session_store on the user manager to the middleware's store"
                )
                logger.warning(
                    "the sessions of user %r were not ended after %s outside a request: %s",
                    user_id,
                    reason,
                    advice,
                )
                return
            await store.delete_user(user_id)
            return
        await session.load()
        if keep_own and session.user_id == user_id:
            if not session._persistence.stateless:
                await session.revoke_others()
        else:
            await _end_all(session, user_id)


def _session_of(request: Request | None) -> Session | None:
    session = None if request is None else request.scope.get("session")
    return session if isinstance(session, Session) else current_session.get()


async def _end_all(session: Session, user_id: str) -> None:
    """Every session of ``user_id``; with the cookie store, which reaches no other
    browser, this one when it is theirs."""
    if session._persistence.stateless:
        if session.user_id == user_id:
            session.destroy()
    else:
        await session.revoke_all(user_id)
