"""The demo's endpoints: one HTML page plus the small JSON API it is built on.

Endpoints that the page posts to also answer API callers: see :mod:`.inputs` for
how each request's format is decided. Every handler reaches the session through
coatcheck's FastAPI dependencies, which load it from the store on first use.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request
from starlette.responses import RedirectResponse, Response

from ..exceptions import SessionTooLargeError
from ..fastapi import (
    CurrentUser,
    RequiredUser,
    SessionDep,
    not_authenticated,
    recent_user,
    session_responses,
)
from ..session import Session
from .inputs import (
    PageError,
    body_schema,
    form_field,
    from_page,
    has_form_body,
    invalid,
    read_input,
    wants_json,
)
from .pages import render_home
from .schemas import (
    MAX_CART_ITEMS,
    Cart,
    CartItem,
    Confirmation,
    Credentials,
    DeviceInfo,
    Devices,
    LoggedIn,
    Me,
    Revoked,
    SessionInfo,
)
from .settings import RECENT_LOGIN
from .users import authenticate

# What coatcheck may answer instead of any route that uses the session; and, for those
# that change things, the CSRF guard's 403.
router = APIRouter(responses=session_responses(409, 413, 503))
_UNSAFE = session_responses(403)

OTHER_ACCOUNT = (
    "That page was open for another account than the one signed in now, so nothing was "
    "changed. This is the page of who is signed in."
)
INVALID_LOGIN = "Invalid username or password"
WRONG_PASSWORD = "Wrong password"  # noqa: S105 - a message, not a password
CONFIRM_FIRST = "Signing out everywhere needs a recent sign-in: confirm your password first."
TOO_LARGE = "That was more than this page takes; nothing was saved."
TOO_MANY_SESSIONS = "Signed in on too many devices already: sign out on one of them first"
_NOT_AUTHENTICATED: dict[int | str, dict[str, Any]] = {401: {"description": "Nobody is signed in"}}


async def _check_password(request: Request, username: str, password: str) -> str | None:
    """:func:`authenticate`, off the event loop: argon2 takes a tenth of a second of CPU
    and 64 MiB. Only as many run at once as there are cores, so that a flood of logins
    queues instead of taking a worker's memory."""
    state = request.app.state
    if getattr(state, "hashing", None) is None:  # made in the app's event loop
        state.hashing = anyio.CapacityLimiter(os.cpu_count() or 1)
    return await anyio.to_thread.run_sync(authenticate, username, password, limiter=state.hashing)


def _to_page() -> RedirectResponse:
    """Post/redirect/get: a reload after a form post does not post again."""
    return RedirectResponse("/", status_code=303)


def _cart(session: Session) -> list[str]:
    return _items(session.get("cart"))


def _items(value: object) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


@router.get("/", include_in_schema=False)
async def home(request: Request, session: SessionDep) -> Response:
    return await render_home(request, session)


@router.post(
    "/login",
    response_model=LoggedIn,
    responses={
        303: {"description": "Form post: back to the page"},
        401: {"description": INVALID_LOGIN},
        403: {
            **_UNSAFE[403],
            "description": "CSRF check failed, or (with --max-sessions) " + TOO_MANY_SESSIONS,
        },
    },
    openapi_extra=body_schema(Credentials),
)
async def login(request: Request, session: SessionDep) -> Response | LoggedIn:
    """Check the password, then bind the session to the user under a new ID."""
    credentials = await read_input(request, Credentials)
    user = await _check_password(request, credentials.username, credentials.password)
    # A typo must not lose "Shared computer": the page comes back as it was sent.
    ticked = frozenset(name for name in ("remember", "shared") if getattr(credentials, name))
    if user is None:
        if wants_json(request):
            raise not_authenticated(INVALID_LOGIN)
        raise PageError(
            INVALID_LOGIN, 401, username=credentials.username, field="password", ticked=ticked
        )
    if not await session.can_login(user):
        if wants_json(request):
            raise HTTPException(403, TOO_MANY_SESSIONS)
        raise PageError(TOO_MANY_SESSIONS, 403, username=credentials.username, ticked=ticked)
    # Logging in as someone else drops the data: bob must not inherit alice's cart.
    if credentials.shared:
        session.login(user, idle_timeout=request.app.state.shared_idle)
    else:
        session.login(user, remember=credentials.remember)
    return LoggedIn(user=user) if wants_json(request) else _to_page()


@router.post(
    "/logout",
    status_code=204,
    response_class=Response,
    responses={303: {"description": "Form post: back to the page"}, **_UNSAFE},
)
async def logout(request: Request, session: SessionDep) -> Response:
    """Delete the session from the store and clear the cookie."""
    session.logout()
    return Response(status_code=204) if wants_json(request) else _to_page()


@router.post(
    "/confirm",
    response_model=LoggedIn,
    responses={
        303: {"description": "Form post: back to the page"},
        401: {"description": f"Nobody is signed in, or {WRONG_PASSWORD.lower()}"},
        **_UNSAFE,
    },
    openapi_extra=body_schema(Confirmation),
)
async def confirm(request: Request, user: CurrentUser, session: SessionDep) -> Response | LoggedIn:
    """Prove again who you are: the sign-in is dated now, under a new ID, data kept."""
    page = from_page(request)
    if user is None:
        if page:  # signed out meanwhile: the page will offer the login form
            return _to_page()
        raise not_authenticated()
    password = (await read_input(request, Confirmation)).password
    if await _check_password(request, user, password) is None:
        if page:
            raise PageError(WRONG_PASSWORD, 401, field="confirm-password")
        raise not_authenticated(WRONG_PASSWORD)
    # Signed in anew, keeping remember-me and the limits chosen at sign-in (a shared
    # computer's): a step-up login chooses none of them again.
    session.login(user)
    if page:
        session.flash("Password confirmed.")
        return _to_page()
    return LoggedIn(user=user)


@router.get("/me", responses=_NOT_AUTHENTICATED)
async def me(user: RequiredUser, session: SessionDep) -> Me:
    return Me(
        user=user,
        session=SessionInfo(
            id=session.public_id,
            created_at=session.created_at.isoformat(),
            expires_at=session.expires_at.isoformat(),
        ),
    )


@router.get("/cart")
async def cart(session: SessionDep) -> Cart:
    return Cart(items=_cart(session))


@router.post(
    "/cart/items",
    status_code=201,
    response_model=Cart,
    responses={303: {"description": "Form post: back to the page"}, **_UNSAFE},
    openapi_extra=body_schema(CartItem),
)
async def add_item(request: Request, session: SessionDep) -> Response | Cart:
    """Works without an account: the first item starts an anonymous session."""
    item = (await read_input(request, CartItem)).item
    if session.ticket_ended and from_page(request):
        session.flash("Your session had ended, so this item starts a new cart.")
    added = len(_cart(session)) < MAX_CART_ITEMS

    def add(cart: object) -> list[str]:
        # Re-run on the stored cart if a parallel request saved first: the last run
        # is what is stored, and says whether a parallel add took the last place.
        nonlocal added
        items = _items(cart)
        added = len(items) < MAX_CART_ITEMS
        return [*items, item] if added else items

    if added:
        before = _cart(session)
        session.modify("cart", add, default=[])
        # Saved now rather than as the response starts, so the answer says what the
        # store holds: 201 only for an item that is in the cart.
        try:
            await session.save()
        except SessionTooLargeError:
            # Only the cookie store is this small: the cart as it was stays.
            session["cart"] = before
            message = "The cart is full: no more fits in the session's cookie."
            if wants_json(request):
                raise HTTPException(status_code=413, detail=message) from None
            raise PageError(message, 413, field="item") from None
    if not added:
        message = f"The cart is full ({MAX_CART_ITEMS} items)."
        if wants_json(request):
            raise invalid("item", message)
        raise PageError(message, 422, field="item")
    return Cart(items=_cart(session)) if wants_json(request) else _to_page()


@router.get("/sessions", responses=_NOT_AUTHENTICATED)
async def sessions(user: RequiredUser, session: SessionDep) -> Devices:
    """The signed-in user's live sessions; ``current`` marks the one asking."""
    return Devices(
        sessions=[
            DeviceInfo(
                id=device.id,
                created_at=device.created_at.isoformat(),
                last_seen_at=device.last_seen_at.isoformat(),
                user_agent=device.user_agent,
                ip_address=device.ip_address,
                current=device.current,
            )
            for device in await session.devices()
        ]
    )


@router.post(
    "/sessions/revoke-others",
    response_model=Revoked,
    responses={
        303: {"description": "Form post: back to the page"},
        **_NOT_AUTHENTICATED,
        **_UNSAFE,
    },
)
async def revoke_others(
    request: Request, user: CurrentUser, session: SessionDep
) -> Response | Revoked:
    """Sign out every other device of this user."""
    page = from_page(request)
    if user is None:
        if page:  # signed out meanwhile: the page will offer the login form
            return _to_page()
        raise not_authenticated()
    await _refuse_if_for_another_account(request, user)
    revoked = await session.revoke_others()
    if not page:
        return Revoked(revoked=revoked)
    session.flash(
        f"Signed out {revoked} other device{'s' if revoked != 1 else ''}."
        if revoked
        else "No other device was signed in."
    )
    return _to_page()


@router.post(
    "/sessions/revoke-all",
    response_model=Revoked,
    responses={
        303: {"description": "Form post: back to the page"},
        401: {"description": "Nobody is signed in, or not recently: POST /confirm first"},
        **_UNSAFE,
    },
)
async def revoke_all(
    request: Request, user: Annotated[str, recent_user(RECENT_LOGIN)], session: SessionDep
) -> Response | Revoked:
    """Sign out every device of this user, this one included; needs a recent sign-in.

    Past it, a 401 asks for the password (``POST /confirm``); a page's form gets the
    page back with that request (see ``app._page_for_form_posts``).
    """
    await _refuse_if_for_another_account(request, user)
    revoked = await session.revoke_all()
    return _to_page() if from_page(request) else Revoked(revoked=revoked)


async def _refuse_if_for_another_account(request: Request, user: str) -> None:
    """A page's button, from a tab left open on alice's page after bob signed in on
    this browser: it would sign bob's devices out. Refused, and the page shown is his."""
    if not (from_page(request) and has_form_body(request)):
        return
    account = await form_field(request, "account")
    if account and account != user:
        raise PageError(OTHER_ACCOUNT, 409)


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    response_class=Response,
    responses={
        404: {"description": "Not one of this user's live sessions"},
        **_NOT_AUTHENTICATED,
        **_UNSAFE,
    },
)
async def revoke(session_id: str, user: RequiredUser, session: SessionDep) -> Response:
    """Sign out one device by its public id (this one included)."""
    if not await session.revoke(session_id):
        raise HTTPException(status_code=404, detail="No such session")
    return Response(status_code=204)


@router.post("/sessions/{session_id}/revoke", include_in_schema=False)
async def revoke_from_page(
    request: Request, session_id: str, user: CurrentUser, session: SessionDep
) -> Response:
    """The page's revoke buttons: plain forms cannot send ``DELETE``."""
    if user is None:
        return _to_page()
    # From a tab left open on alice's page, bob's browser now: "already ended" would
    # tell her a lost phone was signed out when it was not.
    await _refuse_if_for_another_account(request, user)
    this_one = session_id == session.public_id
    if not await session.revoke(session_id):
        raise PageError("That session has already ended.", 404)
    if not this_one:  # signing this device out leaves no session to carry a message
        session.flash("Signed out that device.")
    return _to_page()
