"""What a user's type checker says of code written as the README shows it: mypy --strict
on a small app of the kinds of calls that were refused though they work."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

USER_CODE = """
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.datastructures import Secret

from coatcheck import Session, SessionConfig, StarletteImport
from coatcheck.fastapi import SessionDep, recent_user, session_model, user_loader


@dataclass
class User:
    name: str


class Cart(BaseModel):
    items: list[str] = []


async def load_user(user_id: str) -> User | None:
    return User(user_id)


def load_user_in_a_thread(user_id: str) -> User | None:
    return User(user_id)


app = FastAPI()


# A loader as a parameter's default, not inside Annotated, where mypy checks nothing.
@app.get("/me")
async def me(user: User = user_loader(load_user)) -> str:
    return user.name


@app.get("/me-too")
async def me_too(user: User = user_loader(load_user_in_a_thread)) -> str:
    return user.name


@app.post("/cart/{item}")
async def add(item: str, cart: Annotated[Cart, session_model("cart", Cart)]) -> int:
    cart.items.append(item)
    return len(cart.items)


@app.get("/session")
async def read(session: SessionDep) -> bool:
    return isinstance(session, Session)


config = SessionConfig(
    idle_timeout=1800.0,  # "durations take seconds or a timedelta"
    starlette_import=StarletteImport(secret_key=Secret("a-key-of-sixteen-bytes-or-more")),
)
recent = recent_user(600.0)
"""


def test_code_written_as_the_readme_shows_passes_mypy_strict(tmp_path: Path) -> None:
    app = tmp_path / "user_app.py"
    app.write_text(textwrap.dedent(USER_CODE))
    settings = tmp_path / "mypy.ini"
    settings.write_text("[mypy]\n")  # the user's, not this repository's
    out, err, status = api.run(
        [
            "--strict",
            "--config-file",
            str(settings),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(app),
        ]
    )
    assert status == 0, out + err
