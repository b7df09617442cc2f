from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coatcheck._cookies import CookieWriter, cookie_needle, read_cookie
from coatcheck._ids import key_of, new_session_id, store_key
from coatcheck.config import CookieConfig
from coatcheck.exceptions import ConfigurationError

SID = "A" * 43
NEEDLE = cookie_needle("session")


def headers(*values: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", value) for value in values]


def test_reads_the_named_cookie_among_others() -> None:
    assert read_cookie(headers(b"a=1; session=" + SID.encode() + b"; b=2"), NEEDLE) == SID


def test_name_is_case_sensitive_and_exact() -> None:
    for raw in (b"Session=x", b"sessionx=x", b"xsession=x", b"session =x"):
        assert read_cookie(headers(raw), NEEDLE) is None, raw


def test_conflicting_duplicates_mean_none_in_any_order() -> None:
    assert read_cookie(headers(b"session=a; session=b"), NEEDLE) is None
    assert read_cookie(headers(b"session=b", b"session=a"), NEEDLE) is None
    assert read_cookie(headers(b"session=a; session=a"), NEEDLE) == "a"


def test_cookies_split_over_several_headers() -> None:
    assert read_cookie(headers(b"a=1", b"session=z"), NEEDLE) == "z"


def test_non_ascii_oversized_and_junk_sized_are_ignored() -> None:
    assert read_cookie(headers("session=é".encode()), NEEDLE) is None
    assert read_cookie(headers(b"session=" + b"a" * 4_097), NEEDLE) is None  # no browser keeps it
    assert read_cookie(headers(b"session=a; pad=" + b"x" * 70_000), NEEDLE) is None
    # One junk-sized header voids the others: what it hid might have been a second value.
    assert read_cookie(headers(b"session=a", b"pad=" + b"x" * 70_000), NEEDLE) is None


def test_junk_split_over_many_headers_is_judged_as_one() -> None:
    """Each header under the cap, together far over it: a hundred of them cost the
    server a second of CPU when each was judged alone."""
    junk = b"session=;" * 7_000
    assert read_cookie(headers(b"session=a", *[junk] * 2), NEEDLE) is None
    assert (
        read_cookie(headers(b"session=a", b"pad=" + b"x" * 40_000, b"y" * 30_000), NEEDLE) is None
    )


def test_the_name_repeated_past_any_browsers_habit_is_junk() -> None:
    assert read_cookie(headers(b"; ".join([b"session=a"] * 16)), NEEDLE) == "a"
    assert read_cookie(headers(b"; ".join([b"session=a"] * 17)), NEEDLE) is None
    assert read_cookie(headers(*[b"session=a"] * 17), NEEDLE) is None
    # Only cookies of that very name count: a site may have many others ending in it.
    others = b"; ".join(b"app%d_session=x" % n for n in range(40))
    assert read_cookie(headers(others + b"; session=a; note=session=1"), NEEDLE) == "a"


def test_large_other_cookies_do_not_hide_the_session() -> None:
    """A site's analytics and preference cookies can fill many kilobytes: the session
    cookie beside them is still read."""
    assert read_cookie(headers(b"session=a; pad=" + b"x" * 20_000), NEEDLE) == "a"
    assert read_cookie(headers(b"session=a", b"pad=" + b"x" * 20_000), NEEDLE) == "a"


def test_the_limits_are_exact() -> None:
    pair = b"session=" + SID.encode() + b"; pad="
    for size, expected in ((65_536, SID), (65_537, None)):
        raw = pair + b"x" * (size - len(pair))
        assert len(raw) == size
        assert read_cookie(headers(raw), NEEDLE) == expected, size
    assert read_cookie(headers(b"session=" + b"a" * 4_096), NEEDLE) == "a" * 4_096


def test_other_headers_are_not_cookies() -> None:
    assert read_cookie([(b"x-session", b"session=a")], NEEDLE) is None


def test_writer_builds_set_and_clear_headers() -> None:
    writer = CookieWriter(CookieConfig())
    assert writer.set(SID, None) == (
        f"__Host-session={SID}; Path=/; HttpOnly; Secure; SameSite=Lax".encode()
    )
    assert writer.set(SID, 60).startswith(f"__Host-session={SID}; Max-Age=60; Path=/".encode())
    cleared = writer.clear().decode()
    assert cleared.startswith("__Host-session=; Max-Age=0; Expires=Thu, 01 Jan 1970")
    assert cleared.endswith("; Path=/; HttpOnly; Secure; SameSite=Lax")


def test_writer_honours_every_attribute() -> None:
    config = CookieConfig(
        name="sid", secure=False, httponly=False, samesite="strict", path="/app", domain="a.test"
    )
    assert (
        CookieWriter(config).set("v", None) == b"sid=v; Path=/app; Domain=a.test; SameSite=Strict"
    )


def test_a_partitioned_cookie_says_so_and_needs_secure() -> None:
    config = CookieConfig(samesite="none", partitioned=True)
    assert CookieWriter(config).set("v", None).endswith(b"; Secure; SameSite=None; Partitioned")
    assert CookieWriter(config).clear().endswith(b"; Partitioned")
    with pytest.raises(ConfigurationError, match="partitioned=True requires secure=True"):
        CookieConfig(secure=False, partitioned=True)


def test_conflicting_duplicates_are_a_security_event(caplog: pytest.LogCaptureFixture) -> None:
    assert read_cookie(headers(b"session=a; session=b"), NEEDLE) is None
    (record,) = [r for r in caplog.records if r.name == "coatcheck.security"]
    assert "two different session cookies" in record.getMessage()
    assert "=a" not in record.getMessage()


def _split_reference(headers: list[tuple[bytes, bytes]], needle: bytes) -> str | None:
    """The plain reading of RFC 6265 pairs that the fast scan must agree with."""
    values = set()
    cookies = [raw for key, raw in headers if key == b"cookie"]
    pairs = [part.strip(b" \t") for raw in cookies for part in raw.split(b";")]
    if sum(map(len, cookies)) > 65_536 or sum(p.startswith(needle) for p in pairs) > 16:
        return None
    for raw in cookies:
        for part in raw.split(b";"):
            part = part.strip(b" \t")
            if part.startswith(needle):
                values.add(part[len(needle) :])
    if len(values) != 1:
        return None
    value = values.pop()
    if len(value) > 4_096:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


_PIECES = st.sampled_from(
    [b"session=", b"session", b"xsession=", b"=", b";", b"; ", b" ", b"\t", b"a", b"b", b"\xc3\xa9"]
)


@given(st.lists(st.lists(_PIECES, max_size=12).map(b"".join), min_size=1, max_size=3))
@settings(max_examples=2_000, deadline=None)
def test_fast_scan_agrees_with_splitting_into_pairs(values: list[bytes]) -> None:
    assert read_cookie(headers(*values), NEEDLE) == _split_reference(headers(*values), NEEDLE)


def test_only_ids_this_library_could_mint_get_a_store_key() -> None:
    minted = new_session_id()
    assert key_of(minted) == store_key(minted)
    for junk in (minted[:-1], minted + "A", minted[:-1] + "=", minted[:-1] + "é", "", "A" * 44):
        assert key_of(junk) is None, junk
    # Every character token_urlsafe draws from, the two beyond letters and digits included.
    for edge in ("-" * 43, "_" * 43, "z9" * 21 + "Z"):
        assert key_of(edge) == store_key(edge), edge
