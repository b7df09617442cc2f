"""The demo's two accounts, checked the way a real app should check passwords.

The argon2 hashes are computed once and pasted here, so start-up costs nothing.
Unknown usernames are verified against a dummy hash too: every failed login then
takes one argon2 verification, and timing does not reveal which names exist.
"""

from __future__ import annotations

from pwdlib import PasswordHash

#: Shown on the demo page and in the CLI banner: these are public on purpose.
DEMO_CREDENTIALS: tuple[tuple[str, str], ...] = (("alice", "wonderland"), ("bob", "builder"))

_HASHES: dict[str, str] = {
    "alice": "$argon2id$v=19$m=65536,t=3,p=4$jZqKmAXjwRYNFxhnUZ+8vA$"
    "pw8W2vk6f1KszemUZZScjaNOVYJyw0BUKPLLgd0vO9E",
    "bob": "$argon2id$v=19$m=65536,t=3,p=4$7TG1yyoDvl2dp+D4CSWY/Q$"
    "UvPakN3Bl6cP/qKS+i17sEWsZU2hVO5FeX2I9bD8pdg",
}
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$qNhQWxno/lJwbwZHHMYyeA$"
    "jzG1lxrwWtqrLEiZHCR6hI0SexFv1TdKVvanePvrn0A"
)

_hasher = PasswordHash.recommended()


def authenticate(username: str, password: str) -> str | None:
    """The user id when the password is right, else ``None``.

    CPU-bound (about 0.1 s): call it from a worker thread, not the event loop.
    """
    stored = _HASHES.get(username)
    valid = bool(_hasher.verify(password, stored if stored is not None else _DUMMY_HASH))
    return username if valid and stored is not None else None
