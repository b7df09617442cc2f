from __future__ import annotations

import copy
import pickle
import uuid
from functools import partial

import pytest

from coatcheck import MemoryStore, SessionConfig, SessionNotLoadedError, SessionRecord, Store
from coatcheck._ids import new_session_id, store_key
from coatcheck._persist import Persistence
from coatcheck.events import SessionEvent
from coatcheck.session import Session
from coatcheck.testing import FakeClock

pytestmark = pytest.mark.anyio


def request_scope(
    cookie: str | None = None, client: tuple[str, int] | None = ("192.0.2.10", 50123)
) -> dict[str, object]:
    headers = [] if cookie is None else [(b"cookie", f"__Host-session={cookie}".encode())]
    headers.append((b"user-agent", b"pytest-browser/1.0"))
    return {"type": "http", "headers": headers, "client": client}


@pytest.fixture
def persistence(clock: FakeClock) -> Persistence:
    return Persistence(MemoryStore(), SessionConfig(clock=clock), None)


async def fresh(persistence: Persistence, cookie: str | None = None) -> Session:
    return await Session(persistence, request_scope(cookie)).load()


async def saved(persistence: Persistence, session: Session) -> str:
    """Commit like the middleware does and return the cookie value it would send."""
    headers = dict(await persistence.commit(session, 200))
    return headers[b"set-cookie"].decode().split(";")[0].split("=", 1)[1]


async def test_data_is_out_of_reach_until_loaded(persistence: Persistence) -> None:
    session = Session(persistence, request_scope())
    assert repr(session) == "<Session (not loaded)>"
    with pytest.raises(SessionNotLoadedError, match="SessionDep"):
        session["k"] = 1
    with pytest.raises(SessionNotLoadedError):
        _ = session.user_id
    await session.load()
    assert session.is_loaded
    assert await session.load() is session


async def test_mutable_mapping_behaviour(persistence: Persistence) -> None:
    session = await fresh(persistence)
    session["a"] = 1
    session.update(b=2, c=[3])
    assert dict(session) == {"a": 1, "b": 2, "c": [3]}
    assert "a" in session
    assert len(session) == 3
    assert session.pop("a") == 1
    del session["b"]
    assert list(session) == ["c"]
    assert session.get("missing", "default") == "default"
    assert session.setdefault("d", 4) == 4
    copied = session.copy()  # Starlette's request.session is a dict: code calls .copy()
    assert copied == {"c": [3], "d": 4}
    assert type(copied) is dict
    session.clear()
    assert dict(session) == {}
    assert repr(session) == "<Session public_id='' user=None keys=[]>"  # not stored yet


async def test_two_visitors_sessions_alike_in_data_print_apart(persistence: Persistence) -> None:
    """Response caches (fastapi-cache2, cashews) key a route's result by the text of its
    arguments: two visitors' carts must not share a key, and so one page."""
    carts = []
    for _ in range(2):
        session = await fresh(persistence)
        session["cart"] = ["apple"]
        carts.append(await fresh(persistence, await saved(persistence, session)))
    first, second = (repr(cart) for cart in carts)
    assert first != second
    assert first == f"<Session public_id={carts[0].public_id!r} user=None keys=['cart']>"


async def test_what_a_dict_does_beyond_a_mapping(persistence: Persistence) -> None:
    """Starlette's ``request.session`` is a dict, and code written for it pops the
    newest key, reverses the keys, and merges with ``|``."""
    session = await fresh(persistence)
    session.update(a=1, b=2)
    assert list(reversed(session)) == ["b", "a"]
    assert session | {"c": 3} == {"a": 1, "b": 2, "c": 3}
    assert {"a": 0, "z": 9} | session == {"a": 1, "z": 9, "b": 2}
    assert type(session | {}) is dict
    session |= {"c": 3}
    assert isinstance(session, Session)
    assert session.popitem() == ("c", 3)
    assert session.popitem() == ("b", 2)
    assert dict(session) == {"a": 1}
    assert session._modified
    session.clear()
    with pytest.raises(KeyError):
        session.popitem()


async def test_a_session_copies_as_its_data_and_never_pickles(persistence: Persistence) -> None:
    """A pickled session would carry its raw ID and the app's store into a job queue or
    a cache; copies are of the data, as Starlette's dict session gives them."""
    session = await fresh(persistence)
    session.login("alice")
    session["cart"] = ["apple"]
    cookie = await saved(persistence, session)
    shallow, deep = copy.copy(session), copy.deepcopy(session)
    assert shallow == deep == {"cart": ["apple"]}
    assert type(shallow) is type(deep) is dict
    deep["cart"].append("pear")
    assert session["cart"] == ["apple"]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match=r"pickle session\.copy\(\)") as caught:
            pickle.dumps(session, protocol)
        assert cookie not in str(caught.value)


async def test_metadata_of_a_stored_session(persistence: Persistence, clock: FakeClock) -> None:
    session = await fresh(persistence)
    session.login("alice")
    sid = await saved(persistence, session)
    clock.advance(60)
    again = await fresh(persistence, sid)
    assert again.user_id == "alice"
    assert not again.is_new
    assert again.public_id == session.public_id
    assert len(again.public_id) == 16
    assert again.created_at.timestamp() == clock() - 60
    assert again.last_seen_at.timestamp() == clock() - 60
    assert again.expires_at.timestamp() == clock() - 60 + 30 * 60
    assert again.remember is False


async def test_expires_at_counts_from_a_request_that_writes_the_session(
    persistence: Persistence, clock: FakeClock
) -> None:
    """What a page shows as "ends at … if unused" must be what this request stores."""
    session = await fresh(persistence)
    session.login("alice")
    sid = await saved(persistence, session)
    clock.advance(200)  # past a tenth of the idle limit: this read refreshes it
    again = await fresh(persistence, sid)
    assert again.expires_at.timestamp() == clock() + 30 * 60
    await persistence.commit(again, 200)
    assert (await fresh(persistence, sid)).expires_at.timestamp() == clock() + 30 * 60

    clock.advance(60)  # no refresh due: the stored deadline stands
    again = await fresh(persistence, sid)
    assert again.expires_at.timestamp() == clock() - 60 + 30 * 60
    again["cart"] = ["apple"]  # ... until the request changes the session
    assert again.expires_at.timestamp() == clock() + 30 * 60
    again.login("alice", remember=True)
    assert again.expires_at.timestamp() == clock() + 14 * 86400


async def test_login_rejects_empty_user_ids(persistence: Persistence) -> None:
    session = await fresh(persistence)
    with pytest.raises(ValueError, match="non-empty string"):
        session.login("")
    with pytest.raises(ValueError, match=r"not UUID: pass str\(user.id\)"):
        session.login(uuid.uuid4())  # type: ignore[arg-type]  # fastapi-users' ids
    with pytest.raises(ValueError, match="NUL"):
        session.login("alice\x00")  # PostgreSQL could not store it: refused on every store
    with pytest.raises(ValueError, match="lone surrogate"):
        session.login("alice\ud800")  # no store can encode it
    with pytest.raises(ValueError, match="at most 512 characters"):
        session.login("é" * 513)  # PostgreSQL could not index it: refused on every store
    assert session.user_id is None
    session.login("😀" * 512)  # 2 KB in UTF-8: within what PostgreSQL indexes
    session.login("zoë 🎉")  # any other text is fine
    assert session.user_id == "zoë 🎉"


async def test_the_longest_user_id_is_stored_and_listed_on_every_store(
    any_store: Store, clock: FakeClock
) -> None:
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    session = await fresh(persistence)
    longest = "😀" * 512  # 2 KB of UTF-8: within a PostgreSQL index entry
    session.login(longest)
    await saved(persistence, session)
    assert [device.id for device in await session.devices()] == [session.public_id]
    assert await session.revoke_all() == 1


async def test_nul_bytes_from_the_client_are_left_out_on_every_store(
    any_store: Store, clock: FakeClock
) -> None:
    """PostgreSQL's text refuses NUL: a user agent or an address carrying one must not
    turn a login into a store error."""
    persistence = Persistence(any_store, SessionConfig(clock=clock, record_ip=True), None)
    scope = request_scope(client=("192.0.2.10\x00", 1))
    scope["headers"] = [(b"user-agent", b"\x00Firefox\x00/1")]
    session = await Session(persistence, scope).load()
    session.login("alice")
    await saved(persistence, session)
    [device] = await session.devices()
    assert (device.user_agent, device.ip_address) == ("Firefox/1", "192.0.2.10")


async def test_login_restarts_the_absolute_lifetime(
    persistence: Persistence, clock: FakeClock
) -> None:
    session = await fresh(persistence)
    session["cart"] = ["apple"]
    sid = await saved(persistence, session)
    clock.advance(600)
    again = await fresh(persistence, sid)
    again.login("bob", remember=True)
    assert again.created_at.timestamp() == clock()
    assert again.remember


async def test_devices_and_revocation(persistence: Persistence, clock: FakeClock) -> None:
    phone = await fresh(persistence)
    phone.login("alice", remember=True)
    phone_id = await saved(persistence, phone)
    start = clock()
    clock.advance(1)
    laptop = await fresh(persistence)
    laptop.login("alice")
    laptop_id = await saved(persistence, laptop)
    bob = await fresh(persistence)
    bob.login("bob")
    await saved(persistence, bob)
    clock.advance(1)

    # The list loads the session itself, as revoke() does.
    current = Session(persistence, request_scope(laptop_id))
    devices = await current.devices()
    assert [device.current for device in devices] == [False, True]
    assert devices[0].user_agent == "pytest-browser/1.0"
    assert [device.remember for device in devices] == [True, False]
    assert [device.created_at.timestamp() for device in devices] == [start, start + 1]
    assert [device.last_seen_at.timestamp() for device in devices] == [start, start + 1]
    assert [device.expires_at.timestamp() for device in devices] == [
        start + 14 * 86_400,
        start + 1 + 30 * 60,
    ]
    assert await current.revoke("no-such-device") is False
    assert await current.revoke(devices[0].id) is True
    assert await persistence.store.load(store_key(phone_id), clock()) is None
    assert [device.id for device in await current.devices()] == [devices[1].id]

    bobs_view = await fresh(persistence)
    assert await bobs_view.devices() == []
    assert await bobs_view.revoke(devices[1].id) is False
    assert await bobs_view.revoke_others() == 0
    assert await bobs_view.revoke_all() == 0


async def test_an_anonymous_session_reaches_no_ones_devices(
    any_store: Store, clock: FakeClock
) -> None:
    """Not even those of a user whose id reads "None", which a store keying its index by
    text would take for no user at all."""
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    session = await fresh(persistence)
    session.login("None")
    await saved(persistence, session)
    (device,) = await session.devices()

    anonymous = await fresh(persistence)
    assert await anonymous.devices() == []
    assert await anonymous.revoke(device.id) is False
    assert await anonymous.revoke_others() == 0
    assert await anonymous.revoke_all() == 0
    assert [record.public_id for record in await any_store.list_user("None", clock())] == [
        device.id
    ]


class _RotatingMidList(MemoryStore):
    """Gives one device a new key just after listing it, as a login of that device
    racing the revocation would: the list handed out names its old key."""

    rotate: str | None = None

    async def list_user(self, user_id: str, now: float) -> list[SessionRecord]:
        records = await super().list_user(user_id, now)
        if self.rotate is not None:
            key, self.rotate = self.rotate, None
            old = await self.load(key, now)
            assert old is not None
            moved = old._replace(key=store_key(new_session_id()), version=old.version + 1)
            assert await self.save(moved, replaces=key, expected_version=old.version)
        return records


async def _signed_in(persistence: Persistence) -> Session:
    """A stored session of alice's, as a device of hers holds it."""
    device = await fresh(persistence)
    device.login("alice")
    await saved(persistence, device)
    assert device._key is not None
    return device


async def test_revoking_a_device_that_gets_a_new_id_meanwhile_still_ends_it(
    clock: FakeClock,
) -> None:
    store = _RotatingMidList()
    persistence = Persistence(store, SessionConfig(clock=clock), None)
    phone, laptop = await _signed_in(persistence), await _signed_in(persistence)

    store.rotate = phone._key
    assert await laptop.revoke(phone.public_id) is True
    assert [r.public_id for r in await store.list_user("alice", clock())] == [laptop.public_id]


async def test_an_admin_revoke_by_public_id_ends_a_device_that_gets_a_new_id_meanwhile(
    clock: FakeClock,
) -> None:
    """What ``coatcheck sessions revoke --id`` runs: the store's own listing, no session."""
    from coatcheck._devices import end_device

    store = _RotatingMidList()
    phone = await _signed_in(Persistence(store, SessionConfig(clock=clock), None))
    store.rotate = phone._key
    listing = partial(store.list_user, "alice", clock())
    assert await end_device(store, listing, phone.public_id, now=clock) == (True, False)
    assert await store.list_user("alice", clock()) == []
    assert await end_device(store, listing, phone.public_id, now=clock) == (False, False)


async def test_revoke_others_and_revoke_all(persistence: Persistence, clock: FakeClock) -> None:
    ids = []
    for _ in range(3):
        session = await fresh(persistence)
        session.login("alice")
        ids.append(await saved(persistence, session))
    current = await fresh(persistence, ids[0])
    assert await current.revoke_others() == 2
    assert [d.current for d in await current.devices()] == [True]
    assert await current.revoke_all() == 1
    assert current.user_id is None
    assert await persistence.store.count(clock()) == 0


@pytest.mark.parametrize("browser", ["anonymous", "alice", "bob"])
async def test_a_reset_link_ends_the_users_sessions_and_signs_in_here(
    any_store: Store, clock: FakeClock, browser: str
) -> None:
    """A password reset from an emailed link, opened in any browser: every session of
    the user ends, this one among them if it is one, and the login after it stands."""
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    for user in ("alice", "alice", "bob"):
        device = await fresh(persistence)
        device.login(user, remember=True)
        await saved(persistence, device)
    cookie = None
    if browser != "anonymous":
        here = await fresh(persistence)
        here.login(browser)
        cookie = await saved(persistence, here)
    here = await fresh(persistence, cookie)
    assert await here.revoke_all("alice") == (3 if browser == "alice" else 2)
    here.login("alice")
    here["flash"] = "Your password was changed"
    after = await fresh(persistence, await saved(persistence, here))
    assert (after.user_id, after["flash"]) == ("alice", "Your password was changed")
    assert [device.current for device in await after.devices()] == [True]
    bobs = {record.user_id for record in await any_store.list_user("bob", clock())}
    assert bobs == {"bob"}  # bob's phone; his session in this browser became alice's


@pytest.mark.parametrize("then", ["login", "logout"])
async def test_revoking_whom_this_request_signed_out_leaves_its_own_end_to_the_commit(
    any_store: Store, clock: FakeClock, then: str
) -> None:
    """A switch of user (or a logout) and then an end of the previous user's sessions:
    the commit still finds the record it ends, so bob's login stands."""
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    phone = await fresh(persistence)
    phone.login("alice")
    await saved(persistence, phone)
    here = await fresh(persistence)
    here.login("alice")
    here = await fresh(persistence, await saved(persistence, here))
    if then == "login":
        here.login("bob")
    else:
        here.logout()
    assert await here.revoke_all("alice") == 1  # the phone; this one ends as it commits
    cookie = await saved(persistence, here)  # cleared by the logout
    assert await any_store.list_user("alice", clock()) == []
    assert (await fresh(persistence, cookie)).user_id == ("bob" if then == "login" else None)


async def test_revoking_another_users_sessions_names_them_in_the_event(clock: FakeClock) -> None:
    events: list[SessionEvent] = []
    persistence = Persistence(MemoryStore(), SessionConfig(clock=clock), None, [events.append])
    alices = await fresh(persistence)
    alices.login("alice")
    await saved(persistence, alices)
    admin = await fresh(persistence)
    admin.login("admin")
    await saved(persistence, admin)
    events.clear()
    assert await admin.revoke_all("alice") == 1
    assert [(e.kind, e.user_id, e.count) for e in events] == [("revoked", "alice", 1)]
    assert admin.user_id == "admin"
    assert [device.current for device in await admin.devices()] == [True]
    with pytest.raises(ValueError, match="non-empty string"):
        await admin.revoke_all("")


async def test_revoking_the_current_device_destroys_it(persistence: Persistence) -> None:
    session = await fresh(persistence)
    session.login("alice")
    sid = await saved(persistence, session)
    again = await fresh(persistence, sid)
    (device,) = await again.devices()
    assert await again.revoke(device.id)
    headers = dict(await persistence.commit(again, 200))
    assert b"Max-Age=0" in headers[b"set-cookie"]


async def test_undecodable_record_becomes_an_empty_session(
    persistence: Persistence, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:

    session = await fresh(persistence)
    session["k"] = "v"
    sid = await saved(persistence, session)
    record = await persistence.store.load(store_key(sid), clock())
    assert record is not None
    await persistence.store.save(record._replace(data=b"\x80not json"))
    again = await fresh(persistence, sid)
    assert dict(again) == {}
    assert again.is_new
    assert "undecodable" in caplog.text
    assert sid not in caplog.text


async def test_login_as_someone_else_drops_the_previous_users_data(
    persistence: Persistence,
) -> None:
    session = await fresh(persistence)
    session["cart"] = ["apple"]
    session.login("alice")
    assert dict(session) == {"cart": ["apple"]}
    session.login("alice", remember=True)
    assert dict(session) == {"cart": ["apple"]}
    session.login("bob")
    assert dict(session) == {}
    assert session.user_id == "bob"


async def test_a_new_user_on_the_same_browser_ends_the_previous_users_session(
    persistence: Persistence, clock: FakeClock
) -> None:
    """Nothing carries over to bob, so the store must not keep alice's record either:
    her old cookie would still log her in, and her device list would still show it."""
    session = await fresh(persistence)
    session.login("alice")
    alices = await saved(persistence, session)

    alices_device = session.public_id
    session = await fresh(persistence, alices)
    session.login("bob")
    bobs = await saved(persistence, session)

    assert session.public_id not in ("", alices_device)  # her audit trail is not his
    assert (await fresh(persistence, alices)).user_id is None
    assert (await fresh(persistence, bobs)).user_id == "bob"
    assert await persistence.store.list_user("alice", clock()) == []


async def test_new_data_after_destroy_goes_to_a_new_record(
    persistence: Persistence, clock: FakeClock
) -> None:
    session = await fresh(persistence)
    session.login("alice")
    session["cart"] = ["apple"]
    old = await saved(persistence, session)

    session = await fresh(persistence, old)
    session.destroy()
    session["cart"] = ["pear"]
    new = await saved(persistence, session)

    assert new != old
    assert dict(await fresh(persistence, old)) == {}
    assert dict(await fresh(persistence, new)) == {"cart": ["pear"]}
    assert await persistence.store.list_user("alice", clock()) == []


async def test_a_session_started_after_logout_shares_nothing_with_the_old_one(
    persistence: Persistence, clock: FakeClock
) -> None:
    """A note left after logging out (a flash message) starts a plain browser session:
    not remembered, under a public id that cannot be linked to the user's, and with
    its limits counted from the logout, not from a login long ago."""
    session = await fresh(persistence)
    session.login("alice", remember=True)
    old = await saved(persistence, session)
    alices = session.public_id

    clock.advance(13 * 3600)  # past a browser session's absolute limit (12 h)
    session = await fresh(persistence, old)
    session.logout()
    session["flash"] = "logged out"
    header = dict(await persistence.commit(session, 200))[b"set-cookie"].decode()
    assert "Max-Age" not in header

    new = await fresh(persistence, header.split(";")[0].split("=", 1)[1])
    assert dict(new) == {"flash": "logged out"}
    assert new.remember is False
    assert new.public_id not in ("", alices)
    assert new.created_at.timestamp() == clock()
    assert new.expires_at.timestamp() == clock() + 30 * 60


async def test_deleting_a_key_is_saved(persistence: Persistence) -> None:
    session = await fresh(persistence)
    session.update(keep=1, gone=2)
    sid = await saved(persistence, session)
    later = await fresh(persistence, sid)
    del later["gone"]
    await persistence.commit(later, 200)
    assert dict(await fresh(persistence, sid)) == {"keep": 1}


async def test_modify_never_stores_the_default_object_itself(persistence: Persistence) -> None:
    """Changing the stored value in place must not change the app's shared default."""
    defaults = {"theme": "light"}
    session = await fresh(persistence)
    session.modify("prefs", lambda prefs: prefs, default=defaults)
    session["prefs"]["theme"] = "dark"
    assert defaults == {"theme": "light"}


@pytest.mark.parametrize("read", ["get", "getitem", "setdefault"])
async def test_values_changed_in_place_after_any_read_are_saved(
    persistence: Persistence, read: str
) -> None:
    session = await fresh(persistence)
    session["cart"] = ["apple"]
    session["prefs"] = {"theme": "dark"}
    sid = await saved(persistence, session)

    later = await fresh(persistence, sid)
    if read == "get":
        cart, prefs = later.get("cart"), later.get("prefs")
    elif read == "getitem":
        cart, prefs = later["cart"], later["prefs"]
    else:
        cart, prefs = later.setdefault("cart", []), later.setdefault("prefs", {})
    cart.append("pear")
    prefs["theme"] = "light"
    assert await persistence.commit(later, 200) == []  # same ID: no cookie to send

    again = await fresh(persistence, sid)
    assert dict(again) == {"cart": ["apple", "pear"], "prefs": {"theme": "light"}}


async def test_a_default_handed_out_by_get_is_not_stored(persistence: Persistence) -> None:
    session = await fresh(persistence)
    session["n"] = 1
    sid = await saved(persistence, session)
    later = await fresh(persistence, sid)
    later.get("cart", []).append("apple")
    await persistence.commit(later, 200)
    assert dict(await fresh(persistence, sid)) == {"n": 1}


async def test_addresses_are_kept_only_when_asked_and_follow_the_device(
    clock: FakeClock,
) -> None:
    plain = await fresh(Persistence(MemoryStore(), SessionConfig(clock=clock), None))
    plain.login("alice")
    await saved(plain._persistence, plain)
    assert [device.ip_address for device in await plain.devices()] == [""]

    persistence = Persistence(MemoryStore(), SessionConfig(clock=clock, record_ip=True), None)
    phone = await fresh(persistence)
    phone.login("alice")
    sid = await saved(persistence, phone)
    assert [device.ip_address for device in await phone.devices()] == ["192.0.2.10"]

    # Later, the same session saves from another network: the list follows it.
    moved = await Session(persistence, request_scope(sid, ("2001:db8::7", 443))).load()
    moved["cart"] = ["apple"]
    await persistence.commit(moved, 200)
    assert [device.ip_address for device in await moved.devices()] == ["2001:db8::7"]

    # A server that reports no client (a Unix socket, some test clients) leaves it blank.
    anonymous = await Session(persistence, request_scope(sid, None)).load()
    anonymous["cart"] = ["apple", "pear"]
    await persistence.commit(anonymous, 200)
    assert [device.ip_address for device in await anonymous.devices()] == [""]


async def test_remember_takes_only_a_bool_and_changes_the_id(persistence: Persistence) -> None:
    session = await fresh(persistence)
    session["cart"] = ["apple"]
    sid = await saved(persistence, session)
    again = await fresh(persistence, sid)
    with pytest.raises(TypeError, match="remember must be True or False"):
        again.remember = 1  # type: ignore[assignment]
    again.remember = True
    assert again._id != sid
    headers = dict(await persistence.commit(again, 200))
    assert b"Max-Age=" in headers[b"set-cookie"]


@pytest.mark.parametrize("how", ["idle", "logout", "revoked", "unknown", "none", "not-a-ticket"])
async def test_a_ticket_for_no_live_session_is_told_apart_from_no_ticket(
    any_store: Store, clock: FakeClock, how: str
) -> None:
    """So a page can say "your session ended" rather than show the sign-in form
    without a word: true for a ticket whose session ended, however it ended."""
    persistence = Persistence(any_store, SessionConfig(clock=clock), None)
    session = await fresh(persistence)
    session.login("alice")
    cookie: str | None = await saved(persistence, session)
    assert (await fresh(persistence, cookie)).ticket_ended is False
    if how == "idle":
        clock.advance(31 * 60)
    elif how == "logout":
        ended = await fresh(persistence, cookie)
        ended.logout()
        await persistence.commit(ended, 200)
    elif how == "revoked":
        await any_store.delete_user("alice", now=clock())
    elif how == "unknown":
        cookie = new_session_id()
    elif how == "not-a-ticket":
        cookie = "new"  # what a token client sends to start: no session ended
    else:
        cookie = None
    after = await fresh(persistence, cookie)
    assert (after.user_id, after.ticket_ended) == (None, how not in ("none", "not-a-ticket"))
