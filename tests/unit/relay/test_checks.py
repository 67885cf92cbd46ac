"""ICE check verification against the two SDPs' credentials (RFC 8445 §7.2.2, §7.3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from icerelay.relay.checks import CheckVerdict, check_keys, verify_check, verify_message
from icerelay.sdp import IceCredentials
from icerelay.stun import Address, AttributeType, MessageClass, Method, decode_message
from icerelay.stun.credentials import short_term_key
from icerelay.stun.message import Message

ALICE = IceCredentials("alic", "alicepassword0123456789")
BOB = IceCredentials("bobb", "bobpassword0123456789xx")


def request(username: str, pwd: str | None, nominate: bool = False) -> bytes:
    message = Message(Method.BINDING, MessageClass.REQUEST, b"r" * 12)
    message.add(AttributeType.USERNAME, username)
    message.add(AttributeType.PRIORITY, 1853817087)
    if nominate:
        message.add(AttributeType.USE_CANDIDATE)
    key = short_term_key(pwd) if pwd is not None else None
    return message.encode(integrity_key=key, fingerprint=True)


def response(pwd: str | None, error: bool = False) -> bytes:
    klass = MessageClass.ERROR_RESPONSE if error else MessageClass.SUCCESS_RESPONSE
    message = Message(Method.BINDING, klass, b"r" * 12)
    message.add(AttributeType.XOR_MAPPED_ADDRESS, Address("198.51.100.1", 4000))
    key = short_term_key(pwd) if pwd is not None else None
    return message.encode(integrity_key=key, fingerprint=True)


def test_a_check_from_alice_is_bob_ufrag_colon_alice_ufrag_keyed_with_bobs_password() -> None:
    assert verify_check(request("bobb:alic", BOB.pwd), ALICE, BOB) is CheckVerdict.REQUEST
    nominating = request("bobb:alic", BOB.pwd, nominate=True)
    assert verify_check(nominating, ALICE, BOB) is CheckVerdict.NOMINATION
    # The same check seen as coming from Bob (on his leg) is not his to send.
    assert verify_check(nominating, BOB, ALICE) is CheckVerdict.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("username", "pwd"),
    [
        ("bobb:alic", ALICE.pwd),  # Alice's own password: the wrong key for her requests
        ("bobb:alic", "guessedpassword012345678"),
        ("bobb:mall", BOB.pwd),  # right key, wrong username
        ("alic:bobb", BOB.pwd),
        ("bobb:alic", None),  # no MESSAGE-INTEGRITY at all
    ],
)
def test_requests_that_do_not_verify(username: str, pwd: str | None) -> None:
    assert verify_check(request(username, pwd), ALICE, BOB) is CheckVerdict.UNAUTHENTICATED


def test_a_response_from_alice_is_keyed_with_her_own_password() -> None:
    # Bob checked Alice with Alice's password; her answer carries the same key.
    assert verify_check(response(ALICE.pwd), ALICE, BOB) is CheckVerdict.RESPONSE
    assert verify_check(response(ALICE.pwd, error=True), ALICE, BOB) is CheckVerdict.RESPONSE
    assert verify_check(response(BOB.pwd), ALICE, BOB) is CheckVerdict.UNAUTHENTICATED
    assert verify_check(response(None), ALICE, BOB) is CheckVerdict.UNAUTHENTICATED


def test_other_stun_malformed_and_missing_credentials() -> None:
    indication = Message(Method.BINDING, MessageClass.INDICATION, b"i" * 12).encode()
    assert verify_check(indication, ALICE, BOB) is CheckVerdict.OTHER
    assert verify_check(indication, None, BOB) is CheckVerdict.OTHER
    allocate = Message(Method.ALLOCATE, MessageClass.REQUEST, b"a" * 12).encode()
    assert verify_check(allocate, ALICE, BOB) is CheckVerdict.OTHER
    assert verify_check(b"\x00\x01\x00\x04" + b"\x21\x12\xa4\x42" + b"t" * 12, ALICE, BOB) is (
        CheckVerdict.MALFORMED
    )
    # Without both SDPs' credentials nothing verifies.
    good = request("bobb:alic", BOB.pwd)
    assert verify_check(good, ALICE, None) is CheckVerdict.UNAUTHENTICATED
    assert verify_check(good, None, BOB) is CheckVerdict.UNAUTHENTICATED


def test_keys_are_computed_once_and_reject_unpreparable_passwords() -> None:
    keys = check_keys(ALICE, BOB)
    assert keys is not None and keys.username == "bobb:alic"
    assert verify_message(decode_message(request("bobb:alic", BOB.pwd)), keys) is (
        CheckVerdict.REQUEST
    )
    assert check_keys(ALICE, IceCredentials("bobb", "bad\x00password0123456789")) is None
    assert check_keys(None, BOB) is None


def test_checks_built_by_aioice_verify_with_the_two_sdps_credentials() -> None:
    # An independent ICE implementation builds the checks: the relay must agree with it on
    # which ufrag comes first and which password keys a request and a response.
    aioice_ice = pytest.importorskip("aioice.ice")
    aioice_stun = pytest.importorskip("aioice.stun")
    alice = aioice_ice.Connection(ice_controlling=True)
    bob = aioice_ice.Connection(ice_controlling=False)
    alice.remote_username, alice.remote_password = bob.local_username, bob.local_password
    bob.remote_username, bob.remote_password = alice.local_username, alice.local_password
    alice_sdp = IceCredentials(alice.local_username, alice.local_password)
    bob_sdp = IceCredentials(bob.local_username, bob.local_password)
    local = aioice_ice.Candidate("1", 1, "udp", 1, "127.0.0.1", 5000, "host")
    remote = aioice_ice.Candidate("2", 1, "udp", 1, "127.0.0.1", 6000, "host")
    # The pair only needs its protocol's local candidate (no sockets are opened).
    pair = aioice_ice.CandidatePair(SimpleNamespace(local_candidate=local), remote)
    request = alice.build_request(pair, nominate=True)
    request.add_message_integrity(alice.remote_password.encode())  # as check_start does
    request.add_fingerprint()
    assert verify_check(bytes(request), alice_sdp, bob_sdp) is CheckVerdict.NOMINATION
    assert verify_check(bytes(request), bob_sdp, alice_sdp) is CheckVerdict.UNAUTHENTICATED
    # Bob's success response, keyed as aioice's request_received keys it (his own password).
    response = aioice_stun.Message(
        message_method=aioice_stun.Method.BINDING,
        message_class=aioice_stun.Class.RESPONSE,
        transaction_id=request.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 5000)
    response.add_message_integrity(bob.local_password.encode())
    response.add_fingerprint()
    assert verify_check(bytes(response), bob_sdp, alice_sdp) is CheckVerdict.RESPONSE
    assert verify_check(bytes(response), alice_sdp, bob_sdp) is CheckVerdict.UNAUTHENTICATED
