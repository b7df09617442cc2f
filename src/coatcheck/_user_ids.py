"""What a user id may be: the same on every store, whoever hands it over."""

from __future__ import annotations

# Of a user id, in characters: 2 KB at most in UTF-8, within what a PostgreSQL index
# entry may hold (2.7 KB), so a login is refused alike on every store.
LONGEST_USER_ID = 512


def user_text(user_id: object) -> str:
    """``user_id`` as a plain ``str``, or ``TypeError``.

    A ``str`` subclass (a ``str`` Enum, ``Markup``) is taken as the text it holds: stores
    that format it would file it under another name (``f"{Role.ADMIN}"`` is
    ``"Role.ADMIN"``) than those that send its text, and a revocation would miss it. An
    ``int`` matches ``"42"`` in some stores and nothing in others: refused alike.
    """
    if type(user_id) is str:
        return user_id
    if isinstance(user_id, str):
        return str.__str__(user_id)
    raise TypeError(_not_text(user_id))


def check_user_id(user_id: object) -> str:
    """``user_id`` as a plain ``str``; ``ValueError`` for one that some store cannot
    keep or index."""
    if not isinstance(user_id, str):
        raise ValueError(_not_text(user_id))
    if not user_id:
        raise ValueError("user_id must be a non-empty string")
    user_id = user_text(user_id)
    if len(user_id) > LONGEST_USER_ID:
        raise ValueError(
            f"user_id must be at most {LONGEST_USER_ID} characters: stores index it "
            "(PostgreSQL refuses longer index entries)"
        )
    if "\x00" in user_id:
        raise ValueError("user_id must not contain NUL characters: PostgreSQL cannot store them")
    if not user_id.isascii():
        try:
            user_id.encode()
        except UnicodeEncodeError:
            raise ValueError(
                "user_id must be valid Unicode text: a lone surrogate (as JSON's "
                '"\\ud800" decodes to) cannot be stored'
            ) from None
    return user_id


def _not_text(user_id: object) -> str:
    return (
        f"user_id must be a string, not {type(user_id).__name__}: pass str(user.id) for a "
        "number or a UUID"
    )
