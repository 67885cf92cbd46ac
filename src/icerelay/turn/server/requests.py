"""The TURN server's STUN side: requests (Allocate, Refresh, CreatePermission, ChannelBind,
Binding) and the indications that arrive as STUN messages (Send goes to :mod:`.relaying`).

Each handler checks and acts; when it refuses, it raises a :class:`~.refusals.RequestRefused`
that carries the error code and the counter, and :meth:`RequestHandler.handle` answers and
counts in this one place. Refusals before authentication (401, 438, and 400 for what cannot
be authenticated) are rate limited per source IP and answered without integrity, so the server
is no reflection amplifier; the others are answered with the request's credentials.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

from icerelay.errors import StunError
from icerelay.stun import (
    Address,
    AddressErrorCode,
    AttributeType,
    Message,
    MessageClass,
    Method,
    decode_message,
)
from icerelay.stun.binding import BindingEngine
from icerelay.stun.constants import TRANSPORT_UDP
from icerelay.stun.message import encode_attributes, encode_message, message_type
from icerelay.stun.ratelimit import LogLimiter
from icerelay.turn.server.allocation import (
    CHANNEL_LIFETIME,
    CHANNEL_MAX,
    CHANNEL_MAX_LEGACY,
    CHANNEL_MIN,
    PERMISSION_LIFETIME,
    Allocation,
    Channel,
    FiveTuple,
)
from icerelay.turn.server.auth import Authenticator, AuthFailure, Credentials
from icerelay.turn.server.events import AllocationCreated, ChannelBound
from icerelay.turn.server.policy import PeerPolicy
from icerelay.turn.server.ports import Reservation
from icerelay.turn.server.ratelimit import SourceRateLimiter, TokenBucket
from icerelay.turn.server.refusals import (
    AddressFamilyNotSupported,
    AllocationMismatch,
    AllocationQuotaReached,
    BadRequest,
    BadReservation,
    Draining,
    Forbidden,
    InsufficientCapacity,
    PeerAddressFamilyMismatch,
    PeerIsServer,
    RequestRefused,
    SourceQuotaReached,
    StaleNonce,
    Unauthenticated,
    UnauthenticatedBadRequest,
    UnknownAttributes,
    UnsupportedTransport,
    WrongCredentials,
    auth_refusal,
)
from icerelay.turn.server.relaying import Relaying
from icerelay.turn.server.state import ServerState, canonical, family_of

if TYPE_CHECKING:
    from random import Random

A = AttributeType
#: A request's attributes: each type's first value.
Values = dict[int, Any]
#: The attributes of a success response, in order.
Attributes = list[tuple[int, Any]]
_COOKIE = struct.Struct("!I")
#: Success response type of each TURN method.
_SUCCESS_TYPES: dict[int, int] = {
    method: message_type(method, MessageClass.SUCCESS_RESPONSE)
    for method in (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
}
logger = logging.getLogger("icerelay.turn.server")

#: ADDITIONAL-ADDRESS-FAMILY's number in draft-ietf-tram-dual-allocation, which coturn 4.6
#: still sends (RFC 8656 moved it to 0x8000); same value layout, so both are understood.
_ADDITIONAL_ADDRESS_FAMILY_DRAFT = 0x8032
_TURN_METHODS = frozenset(
    (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
)
#: REQUESTED-ADDRESS-FAMILY's values (RFC 8656 §18.1) -> 4 or 6.
_FAMILIES = {1: 4, 2: 6}


def _lifetime(requested: int | None, default: int, maximum: int) -> int:
    """RFC 8656 §7.2/§8: min(requested, maximum), but never below the default."""
    if requested is None:
        return default
    return max(default, min(requested, maximum))


class RequestHandler:
    """Answers the STUN messages clients send to the TURN server."""

    def __init__(
        self,
        state: ServerState,
        relaying: Relaying,
        *,
        rng: Random,
        wall_clock_offset: float = 0.0,
        nonce_key: bytes | None = None,
    ) -> None:
        settings = state.settings
        self.state = state
        self.relaying = relaying
        #: Added to ``now`` to get Unix time (REST API credentials carry Unix timestamps).
        self.wall_clock_offset = wall_clock_offset
        self.auth = Authenticator(
            settings.realm,
            dict(settings.users),
            list(settings.auth_secrets),
            nonce_lifetime=settings.nonce_lifetime,
            sha256=settings.sha256,
            rng=rng,
            nonce_key=nonce_key,
        )
        self.policy = PeerPolicy(list(settings.allow_peers), list(settings.deny_peers))
        self.limiter = SourceRateLimiter(
            settings.unauthenticated_rate, settings.unauthenticated_burst
        )
        self.software = settings.software
        # SOFTWARE ends every answer: encoded once, as a value and as a whole attribute.
        self._software_value: bytes | None = None
        self._software = b""
        if self.software is not None:
            self._software_value = self.software.encode("utf-8")
            self._software = encode_attributes([(A.SOFTWARE, self.software)], bytes(16))
        # Binding answers come from the STUN server's engine, so both behave the same.
        self.binding = BindingEngine(software=settings.software)
        self.channel_max = CHANNEL_MAX_LEGACY if settings.legacy_channel_numbers else CHANNEL_MAX
        self._log_limiter = LogLimiter(60.0)

    # --- dispatch -------------------------------------------------------------------------

    def handle(self, data: bytes, five_tuple: FiveTuple, now: float) -> None:
        """One STUN message from a client: answer it, relay it (Send) or drop it."""
        counters = self.state.counters
        try:
            message = decode_message(data)
        except StunError as error:
            counters["dropped_malformed"] += 1
            # Logged at most once a minute per source: a flood must not become a disk attack.
            suppressed = self._log_limiter.allow(five_tuple[1][0], now)
            if suppressed is not None:
                logger.info(
                    "turn.dropped source=%s transport=%s reason=%r suppressed=%d",
                    five_tuple[1][0],
                    five_tuple[0],
                    str(error),
                    suppressed,
                )
            return
        message_class = message.message_class
        if message_class == MessageClass.INDICATION:
            if message.method == Method.SEND:
                self.relaying.send_indication(message, five_tuple, now)
            else:
                counters["dropped_bad_indication"] += 1
            return
        if message_class != MessageClass.REQUEST:
            counters["dropped_not_request"] += 1
            return
        method = message.method
        if method == Method.BINDING:
            self._binding(message, five_tuple, len(data), now)
            return
        credentials: Credentials | None = None
        try:
            if method not in _TURN_METHODS:
                raise UnauthenticatedBadRequest("Unknown method")
            # Each type's first value, looked up once here instead of a scan per attribute.
            values: Values = dict(reversed(message.attributes))
            outcome = self.auth.check(
                message, five_tuple[0], five_tuple[1], now, now + self.wall_clock_offset, values
            )
            if isinstance(outcome, AuthFailure):
                if outcome.code == 401 or outcome.code == 438:
                    self._challenge(message, outcome, five_tuple, now)
                    return
                raise auth_refusal(outcome.code, outcome.reason)
            credentials = outcome
            self._request(message, values, five_tuple, credentials, now)
        except RequestRefused as refusal:
            self._refuse(message, refusal, five_tuple, credentials, now)

    def _request(
        self,
        message: Message,
        values: Values,
        five_tuple: FiveTuple,
        credentials: Credentials,
        now: float,
    ) -> None:
        if message.unknown_comprehension_required:
            raise UnknownAttributes(list(message.unknown_comprehension_required))
        method = message.method
        if method == Method.ALLOCATE:
            self._allocate(message, values, five_tuple, credentials, now)
            return
        allocation = self.state.by_tuple.get(five_tuple)
        if allocation is None:
            raise AllocationMismatch()
        if allocation.username != credentials.username:
            # RFC 8656 §5: later requests must use the credentials that made the allocation.
            raise WrongCredentials()
        if method == Method.REFRESH:
            answer = self._refresh(message, values, allocation, now)
        elif method == Method.CREATE_PERMISSION:
            answer = self._create_permission(message, allocation, now)
        else:
            answer = self._channel_bind(message, values, allocation, now)
        self._succeed(message, answer, five_tuple, credentials)

    def _challenge(
        self, message: Message, failure: AuthFailure, five_tuple: FiveTuple, now: float
    ) -> None:
        """401 or 438 with a fresh nonce: what every client gets first, so it is encoded from
        prepared bytes (only the nonce and the transaction id differ between answers)."""
        counters = self.state.counters
        # Nothing proves the source address is real: answer at a bounded rate only (no
        # reflection amplifier), and without integrity.
        if not self.limiter.allow(five_tuple[1][0], now):
            counters["dropped_rate_limited"] += 1
            return
        code = failure.code
        counters[Unauthenticated.COUNTER if code == 401 else StaleNonce.COUNTER] += 1
        body = self.auth.challenge(code, failure.reason, five_tuple[0], five_tuple[1], now)
        data = encode_message(
            message_type(message.method, MessageClass.ERROR_RESPONSE),
            message.transaction_id,
            body + self._software,
            message.cookie,
            fingerprint=message.has_fingerprint,
        )
        self.state.out.append((data, five_tuple[2], five_tuple[1], five_tuple[0]))

    def _refuse(
        self,
        message: Message,
        refusal: RequestRefused,
        five_tuple: FiveTuple,
        credentials: Credentials | None,
        now: float,
    ) -> None:
        """Answer *refusal* and count it: the one place refusals become error responses."""
        if refusal.STATUS == 401 or refusal.STATUS == 438:
            self._challenge(message, AuthFailure(refusal.STATUS, refusal.reason), five_tuple, now)
            return
        counters = self.state.counters
        # Refused before authentication: nothing proves the source address is real, so answer
        # at a bounded rate only (no reflection amplifier), and without integrity.
        if credentials is None and not self.limiter.allow(five_tuple[1][0], now):
            counters["dropped_rate_limited"] += 1
            return
        counters[refusal.COUNTER] += 1
        response = message.error_response(refusal.STATUS, refusal.reason)
        if isinstance(refusal, UnknownAttributes):
            response.add(A.UNKNOWN_ATTRIBUTES, refusal.attributes)
        self._respond(message, response, five_tuple, credentials)

    def _succeed(
        self,
        request: Message,
        attributes: Attributes,
        five_tuple: FiveTuple,
        credentials: Credentials,
    ) -> bytes:
        """Answer *request* with a success response carrying *attributes* (and SOFTWARE)."""
        body = encode_attributes(attributes, _COOKIE.pack(request.cookie) + request.transaction_id)
        data = encode_message(
            _SUCCESS_TYPES[request.method],
            request.transaction_id,
            body + self._software,
            request.cookie,
            credentials.key,
            credentials.integrity,
            request.has_fingerprint,
        )
        self.state.out.append((data, five_tuple[2], five_tuple[1], five_tuple[0]))
        return data

    def _respond(
        self,
        request: Message,
        response: Message,
        five_tuple: FiveTuple,
        credentials: Credentials | None,
    ) -> bytes:
        if self._software_value is not None:
            response.add(A.SOFTWARE, self._software_value)
        if credentials is None:
            data = response.encode(fingerprint=request.has_fingerprint)
        else:
            data = response.encode(
                credentials.key, credentials.integrity, fingerprint=request.has_fingerprint
            )
        self.state.out.append((data, five_tuple[2], five_tuple[1], five_tuple[0]))
        return data

    def _binding(self, message: Message, five_tuple: FiveTuple, size: int, now: float) -> None:
        """A TURN server is a STUN server too (RFC 8656 §4): answer Binding requests."""
        counters = self.state.counters
        if not self.limiter.allow(five_tuple[1][0], now):
            counters["dropped_rate_limited"] += 1
            return
        counters["binding_requests"] += 1
        transport, client, server = five_tuple
        datagram = self.binding.answer(
            message,
            Address(client[0], client[1]),
            Address(server[0], server[1]),
            "udp" if transport == "udp" else "tcp",
            size,
        )
        self.state.out.append((datagram.data, server, client, transport))

    # --- Allocate ---------------------------------------------------------------------------

    def _allocate(
        self,
        message: Message,
        values: Values,
        five_tuple: FiveTuple,
        credentials: Credentials,
        now: float,
    ) -> None:
        state = self.state
        existing = state.by_tuple.get(five_tuple)
        if existing is not None:
            if existing.allocate_transaction != message.transaction_id:
                raise AllocationMismatch()
            # A retransmission (our answer was lost): the same answer again (RFC 8656 §7.2).
            state.out.append(
                (existing.allocate_response, five_tuple[2], five_tuple[1], five_tuple[0])
            )
            return
        answer = self._make_allocation(message, values, five_tuple, credentials, now)
        data = self._succeed(message, answer, five_tuple, credentials)
        state.by_tuple[five_tuple].allocate_response = data

    def _make_allocation(
        self,
        message: Message,
        values: Values,
        five_tuple: FiveTuple,
        credentials: Credentials,
        now: float,
    ) -> Attributes:
        state = self.state
        quotas = state.quotas
        transport = values.get(A.REQUESTED_TRANSPORT)
        if transport is None:
            raise BadRequest("REQUESTED-TRANSPORT missing")
        if transport != TRANSPORT_UDP:
            raise UnsupportedTransport()
        token = values.get(A.RESERVATION_TOKEN)
        even_port = values.get(A.EVEN_PORT)
        requested_family = values.get(A.REQUESTED_ADDRESS_FAMILY)
        additional_family = values.get(A.ADDITIONAL_ADDRESS_FAMILY)
        if additional_family is None:
            draft = values.get(_ADDITIONAL_ADDRESS_FAMILY_DRAFT)
            if isinstance(draft, bytes) and len(draft) == 4:
                additional_family = draft[0]
        # RFC 8656 §7.2: combinations that make no sense are bad requests.
        if token is not None and (
            even_port is not None or requested_family is not None or additional_family is not None
        ):
            raise BadRequest("RESERVATION-TOKEN conflict")
        if requested_family is not None and additional_family is not None:
            raise BadRequest("two address families")
        if additional_family is not None and additional_family != 2:
            raise BadRequest("ADDITIONAL-ADDRESS-FAMILY")
        if additional_family is not None and even_port:
            raise BadRequest("EVEN-PORT with dual")
        if state.draining:
            raise Draining()
        if len(state.by_tuple) >= quotas.total_allocations:
            raise InsufficientCapacity()
        user = credentials.quota_user
        reservation: Reservation | None = None
        if token is not None:
            reservation = state.reservations.get(token)
            if reservation is None or reservation.expires <= now or reservation.owner != user:
                raise BadReservation()
            # The reservation counted against the user's quota; the allocation takes its place.
            state.drop_reservation(reservation, release_port=False)
        if state.user_count(user) >= state.quota_of(user, quotas.allocations_per_user):
            if reservation is not None:
                state.release_relay((reservation.relay_host, reservation.port))
            raise AllocationQuotaReached()
        source = five_tuple[1][0]
        per_source = quotas.allocations_per_source
        if per_source and state.source_count(source) >= per_source:
            if reservation is not None:
                state.release_relay((reservation.relay_host, reservation.port))
            suppressed = self._log_limiter.allow(("source_quota", source), now)
            if suppressed is not None:
                logger.warning(
                    "turn.source_quota source=%s allocations=%d suppressed=%d",
                    source,
                    per_source,
                    suppressed,
                )
            raise SourceQuotaReached()

        family = 4
        if reservation is not None:
            family = family_of(reservation.relay_host)
        elif requested_family is not None:
            family = _FAMILIES.get(requested_family, 0)
        if family not in state.relay_hosts:
            raise AddressFamilyNotSupported()

        dont_fragment = A.DONT_FRAGMENT in values
        relays: dict[int, tuple[str, int]] = {}
        new_token_value: bytes | None = None
        if reservation is not None:
            relays[family] = (reservation.relay_host, reservation.port)
        else:
            bound = state.bind_relay(
                family, dont_fragment, bool(even_port is not None), bool(even_port)
            )
            if bound is None:
                raise InsufficientCapacity()
            port, reserved = bound
            relays[family] = (state.relay_hosts[family], port)
            if reserved is not None:
                new_token_value = state.reserve(family, reserved, user, now)
        address_error: AddressErrorCode | None = None
        if additional_family is not None:
            if 6 not in state.relay_hosts:
                address_error = AddressErrorCode(2, 440)
            else:
                bound = state.bind_relay(6, dont_fragment, False, False)
                if bound is None:
                    address_error = AddressErrorCode(2, 508)
                else:
                    relays[6] = (state.relay_hosts[6], bound[0])

        settings = state.settings
        lifetime = _lifetime(
            values.get(A.LIFETIME), settings.default_lifetime, settings.max_lifetime
        )
        bucket = None
        if quotas.bandwidth_per_allocation:
            rate = float(quotas.bandwidth_per_allocation)
            bucket = TokenBucket(rate, rate * quotas.bandwidth_burst_seconds, now)
        allocation = Allocation(
            five_tuple=five_tuple,
            username=credentials.username,
            quota_user=user,
            relays=relays,
            expires=now + lifetime,
            created=now,
            stream=five_tuple[0] != "udp",
            bucket=bucket,
            dont_fragment=dont_fragment,
            allocate_transaction=message.transaction_id,
        )
        state.add(allocation)
        state.events.append(
            AllocationCreated(five_tuple, credentials.username, tuple(relays.values()), lifetime)
        )

        answer: Attributes = [
            (A.XOR_RELAYED_ADDRESS, (state.advertised_hosts.get(relay_family, relay[0]), relay[1]))
            for relay_family, relay in relays.items()
        ]
        if address_error is not None:
            answer.append((A.ADDRESS_ERROR_CODE, address_error))
        answer.append((A.LIFETIME, lifetime))
        if new_token_value is not None:
            answer.append((A.RESERVATION_TOKEN, new_token_value))
        # The client's (host, port) is encoded as an Address is.
        answer.append((A.XOR_MAPPED_ADDRESS, five_tuple[1]))
        return answer

    # --- Refresh, CreatePermission, ChannelBind ---------------------------------------------

    def _refresh(
        self, message: Message, values: Values, allocation: Allocation, now: float
    ) -> Attributes:
        family = values.get(A.REQUESTED_ADDRESS_FAMILY)
        if family is not None and _FAMILIES.get(family) not in allocation.relays:
            raise PeerAddressFamilyMismatch()
        requested = values.get(A.LIFETIME)
        state = self.state
        if requested == 0:
            state.delete(allocation, "refresh", now)
            return [(A.LIFETIME, 0)]
        settings = state.settings
        lifetime = _lifetime(requested, settings.default_lifetime, settings.max_lifetime)
        allocation.expires = now + lifetime
        state.schedule(allocation)
        return [(A.LIFETIME, lifetime)]

    def _check_peer(self, allocation: Allocation, peer: Address) -> None:
        if peer.family not in allocation.relays:
            raise PeerAddressFamilyMismatch()
        if not self.policy.is_allowed(peer.host):
            raise Forbidden()

    def _create_permission(
        self, message: Message, allocation: Allocation, now: float
    ) -> Attributes:
        peers = message.get_all(A.XOR_PEER_ADDRESS)
        if not peers:
            raise BadRequest("XOR-PEER-ADDRESS missing")
        # All or nothing (RFC 8656 §9.2): check every peer before installing any.
        for peer in peers:
            self._check_peer(allocation, peer)
        hosts = {canonical(peer.host) for peer in peers}
        live = {host for host, expires in allocation.permissions.items() if expires > now}
        if len(live | hosts) > self.state.quotas.permissions_per_allocation:
            raise InsufficientCapacity("Too many permissions")
        expires = now + PERMISSION_LIFETIME
        for host in hosts:
            self.state.permit(allocation, host, expires)
        return []

    def _channel_bind(
        self, message: Message, values: Values, allocation: Allocation, now: float
    ) -> Attributes:
        state = self.state
        number = values.get(A.CHANNEL_NUMBER)
        peer_address = values.get(A.XOR_PEER_ADDRESS)
        if number is None or peer_address is None:
            raise BadRequest("Missing attributes")
        if not CHANNEL_MIN <= number <= self.channel_max:
            raise BadRequest("Bad channel number")
        self._check_peer(allocation, peer_address)
        if state.is_own(peer_address.host, peer_address.port):
            raise PeerIsServer("Peer is this server")
        peer = (canonical(peer_address.host), peer_address.port)
        channel = allocation.channels.get(number)
        if channel is not None and channel.peer != peer:
            raise BadRequest("Channel bound elsewhere")
        other = allocation.channel_by_peer.get(peer)
        if other is not None and other.number != number:
            raise BadRequest("Peer bound elsewhere")
        cooled = allocation.cooldown_numbers.get(number)
        if cooled is not None and cooled[1] > now and cooled[0] != peer:
            raise BadRequest("Channel cooling down")
        cooled_peer = allocation.cooldown_peers.get(peer)
        if cooled_peer is not None and cooled_peer[1] > now and cooled_peer[0] != number:
            raise BadRequest("Peer cooling down")
        quotas = state.quotas
        if channel is None and len(allocation.channels) >= quotas.channels_per_allocation:
            raise InsufficientCapacity("Too many channels")
        host = peer[0]
        if host not in allocation.permissions and (
            len(allocation.permissions) >= quotas.permissions_per_allocation
        ):
            raise InsufficientCapacity("Too many permissions")
        expires = now + CHANNEL_LIFETIME
        if channel is None:
            channel = Channel(number, peer, allocation.relays[peer_address.family], expires)
            state.bind_channel(allocation, channel)
        else:
            channel.expires = expires  # re-armed when its expiry entry comes due
        # RFC 8656 §12.2: a ChannelBind also installs or refreshes the permission.
        state.permit(allocation, host, now + PERMISSION_LIFETIME)
        # New or refreshed: a shell with a kernel fast path (re)installs it from here.
        state.events.append(ChannelBound(allocation.five_tuple, number, peer, channel.relay))
        return []
