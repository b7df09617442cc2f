from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coatcheck import _hashing
from coatcheck._hashing import KeyedMac
from coatcheck._ids import key_of, new_session_id, store_key


def test_store_keys_are_the_sha256_of_the_id() -> None:
    minted = new_session_id()
    assert store_key(minted) == key_of(minted) == hashlib.sha256(minted.encode()).hexdigest()


def test_a_python_without_its_own_sha256_falls_back_to_openssls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(_hashing.importlib, "import_module", missing)
    assert _hashing._own_sha256() is hashlib.sha256


def test_openssl_in_fips_mode_does_the_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    import _hashlib

    assert _hashing._own_sha256() is not hashlib.sha256  # CPython's own, on this build
    monkeypatch.setattr(_hashlib, "get_fips_mode", lambda: 1)
    assert _hashing._own_sha256() is hashlib.sha256
    # HMACs then run in OpenSSL too, and still copy their keyed state per message.
    monkeypatch.setattr(_hashing, "sha256", _hashing._own_sha256())
    mac = KeyedMac(b"k" * 100)
    for message in (b"", b"bound:" + b"a" * 64):
        assert mac.digest(message) == hmac.new(b"k" * 100, message, hashlib.sha256).digest()


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), messages=st.lists(st.binary(max_size=300), max_size=4))
def test_keyed_mac_is_hmac_sha256_message_after_message(key: bytes, messages: list[bytes]) -> None:
    # Keys past SHA-256's block of 64 bytes are hashed first; each message starts afresh.
    mac = KeyedMac(key)
    for message in messages:
        assert mac.digest(message) == hmac.new(key, message, hashlib.sha256).digest()
