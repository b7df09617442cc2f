"""How :class:`~coatcheck.stores.redis.RedisStore` lays a record out in Redis, and reads
the replies of its scripts."""

from __future__ import annotations

import logging
import secrets
import struct
from typing import Any

from ..exceptions import StoreError
from .base import SessionRecord, implied_login_time


class KeyNames:
    """The names of a session's hash and of a user's index, under one prefix.

    The braces are Cluster hash tags: each key's slot is decided by the part inside.
    """

    __slots__ = ("prefix", "sessions")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sessions = f"{prefix}:s:"  # what every session's name starts with

    def session(self, key: str) -> str:
        return f"{self.sessions}{{{key}}}"

    def index(self, user_id: str) -> str:
        return f"{self.prefix}:u:{{{user_id}}}"

    def receipt(self, key: str) -> str:
        """Where the scripts note what ended a session (see ``_redis_scripts``), in the
        session's slot but outside the sessions' key space."""
        return f"{self.prefix}:t:{{{key}}}"


def save_token() -> str:
    """The random token every save carries, the same in each copy sent (see ``wrote``
    and ``_REVOKED`` in ``_redis_scripts``)."""
    return secrets.token_hex(8)


def encode_fields(record: SessionRecord, token: str) -> list[str | bytes]:
    """The hash's fields: the packed record (first: scripts find it there), plus what
    the scripts read themselves."""
    fields: list[str | bytes] = [
        "b",
        pack(record),
        "e",
        repr(record.expires_at),
        "v",
        str(record.version),
    ]
    if record.user_id is not None:
        fields += ["u", record.user_id]
    if token:
        fields += ["k", token]
    return fields


# A whole record in one value, so a load is one short reply that redis-py parses at
# once: a hash of ten fields costs it a reply element each. Layout: format byte, then
# created, last seen, expires, version, remember, and the lengths of the public id,
# user id (0 when anonymous, else length + 1) and user agent (and, from the second
# format, of the client address; in the third, the time of authentication; in the
# fourth, also the shorter limits a login chose); then those strings and the session
# data. Each record is written in the oldest format that holds it, so workers of
# earlier releases read what this one writes during a rolling deploy: the first, unless
# there is an address, a login time other than the one the older formats imply (see
# ``implied_login_time``: in practice only a login adopted from another library, whose
# time is unknown, 0.0), or limits of its own.
logger = logging.getLogger("coatcheck")

_FORMAT = 1
_FORMAT_IP = 2
_FORMAT_AUTH = 3
_FORMAT_CUT = 4
_HEAD = struct.Struct("!BdddQ?HIH")
_HEAD_IP = struct.Struct("!BdddQ?HIHB")
_HEAD_AUTH = struct.Struct("!BdddQ?HIHBd")
_LIMITS = struct.Struct("!II")
_HEAD_SIZE = _HEAD.size
_HEAD_IP_SIZE = _HEAD_IP.size
_HEAD_AUTH_SIZE = _HEAD_AUTH.size
_new_record = tuple.__new__


def pack(record: SessionRecord) -> bytes:
    public_id = record.public_id.encode()
    user = b"" if record.user_id is None else record.user_id.encode()
    agent = record.user_agent.encode()[:65_535]
    ip = record.ip_address.encode()[:255]
    if len(user) >= 2**32 - 1 or len(public_id) > 65_535:
        raise StoreError("user id or public id too long to store")
    fields = (
        record.created_at,
        record.last_seen_at,
        record.expires_at,
        record.version,
        record.remember,
        len(public_id),
        0 if record.user_id is None else len(user) + 1,
        len(agent),
    )
    if record.idle_timeout or record.absolute_timeout:
        head = _HEAD_AUTH.pack(
            _FORMAT_CUT, *fields, len(ip), record.authenticated_at
        ) + _LIMITS.pack(record.idle_timeout, record.absolute_timeout)
    elif record.authenticated_at != implied_login_time(
        record.created_at, record.user_id is not None
    ):
        head = _HEAD_AUTH.pack(_FORMAT_AUTH, *fields, len(ip), record.authenticated_at)
    elif ip:
        head = _HEAD_IP.pack(_FORMAT_IP, *fields, len(ip))
    else:
        return b"".join((_HEAD.pack(_FORMAT, *fields), public_id, user, agent, record.data))
    return b"".join((head, public_id, user, agent, ip, record.data))


def unpack(key: str, packed: Any) -> SessionRecord | None:
    if not packed:
        return None
    try:
        if packed[0] == _FORMAT_IP:
            _, created, seen, expires, version, remember, id_len, user_len, agent_len, ip_len = (
                _HEAD_IP.unpack_from(packed)
            )
            id_start = _HEAD_IP_SIZE
            authenticated = implied_login_time(created, user_len > 0)
            idle = absolute = 0
        elif packed[0] == _FORMAT_AUTH or packed[0] == _FORMAT_CUT:
            (
                _,
                created,
                seen,
                expires,
                version,
                remember,
                id_len,
                user_len,
                agent_len,
                ip_len,
                authenticated,
            ) = _HEAD_AUTH.unpack_from(packed)
            id_start = _HEAD_AUTH_SIZE
            idle = absolute = 0
            if packed[0] == _FORMAT_CUT:  # the same head, then the limits
                idle, absolute = _LIMITS.unpack_from(packed, id_start)
                id_start += _LIMITS.size
        else:
            fmt, created, seen, expires, version, remember, id_len, user_len, agent_len = (
                _HEAD.unpack_from(packed)
            )
            if fmt != _FORMAT:
                raise _UnknownFormat(f"unknown record format {fmt}: a later release's?")
            ip_len, id_start = 0, _HEAD_SIZE
            authenticated = implied_login_time(created, user_len > 0)
            idle = absolute = 0
        id_end = id_start + id_len
        user_end = id_end + user_len - 1 if user_len else id_end
        agent_end = user_end + agent_len
        ip_end = agent_end + ip_len
        # Every load runs this: the tuple is built directly, in the field order of
        # SessionRecord, rather than through its keyword-taking constructor.
        return _new_record(
            SessionRecord,
            (
                key,
                packed[id_start:id_end].decode(),
                bytes(packed[ip_end:]),
                packed[id_end:user_end].decode() if user_len else None,
                created,
                seen,
                expires,
                remember,
                packed[user_end:agent_end].decode(errors="replace"),
                version,
                packed[agent_end:ip_end].decode(errors="replace") if ip_len else "",
                authenticated,
                idle,
                absolute,
            ),
        )
    except (struct.error, ValueError, IndexError) as exc:
        # No session, rather than a 503 that no wait cures: the browser may sign in
        # again. The record is left as it is, for the release that can read it.
        _unreadable(key, exc)
        return None


_reported: set[str] = set()


def _unreadable(key: str, exc: Exception) -> None:
    """Log a record this release cannot read: once per kind of problem, not per request."""
    problem = str(exc) if isinstance(exc, _UnknownFormat) else type(exc).__name__
    if problem in _reported:
        return
    _reported.add(problem)
    logger.error(
        "session record under key %s... cannot be read (%s): treated as no session and "
        "left as it is; said once",
        key[:12],
        exc,
    )


class _UnknownFormat(ValueError):
    """A record of a format this release does not know: a later one wrote it."""


def done(result: Any) -> bool:
    """Whether a script's reply starts with 1 (done); 0 is refused, 2 a lost race."""
    return bool(result) and int(result[0]) == 1


def refusal(key: str, reply: Any) -> bool | SessionRecord:
    """False for a session that is gone, or the winner of a race (``{2, packed}``)."""
    if not reply or int(reply[0]) != 2:
        return False
    return unpack(key, reply[1]) or False


def owner(result: Any) -> str | None:
    """The owner in a script's {1, owner or nil} reply."""
    if not done(result) or len(result) < 2 or result[1] is None:
        return None
    return text(result[1])


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
