"""The shapes of the demo's JSON API, declared once so ``/docs`` describes them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

MAX_ITEM_LENGTH = 200
MAX_CART_ITEMS = 100  # a session is not a database: keep each record small

Timestamp = Annotated[str, Field(description="ISO 8601, UTC")]


class Credentials(BaseModel):
    """A login attempt; the password limit keeps argon2 from hashing megabytes."""

    username: Annotated[str, Field(min_length=1, max_length=150)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    remember: bool = False
    shared: bool = Field(
        False,
        description="A shared computer: signed out after a few idle minutes, never remembered",
    )


class Confirmation(BaseModel):
    """The signed-in user's password again, before an action that needs a recent sign-in."""

    password: Annotated[str, Field(min_length=1, max_length=1024)]


class CartItem(BaseModel):
    """One thing to put in the cart."""

    item: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ITEM_LENGTH)
    ]


class LoggedIn(BaseModel):
    user: str


class SessionInfo(BaseModel):
    id: str = Field(description="The public id: names the session, cannot be used as one")
    created_at: Timestamp
    expires_at: Timestamp


class Me(BaseModel):
    user: str
    session: SessionInfo


class Cart(BaseModel):
    items: list[str]


class DeviceInfo(BaseModel):
    id: str
    created_at: Timestamp
    last_seen_at: Timestamp
    user_agent: str
    ip_address: str = Field(description="Where the session was last used from")
    current: bool


class Devices(BaseModel):
    sessions: list[DeviceInfo]


class Revoked(BaseModel):
    revoked: int
