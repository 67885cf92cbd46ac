"""What peers send through the relay: Data indications and ChannelData (RFC 8656 §11.6, §12.6).

Each function checks that the server had a reason to relay the data to us (a permission or a
channel we asked for), marks it used (so that it is kept alive), counts it, and returns the
:class:`DataReceived` event, or None (counted) when the data is not for us.
"""

from __future__ import annotations

from icerelay.errors import StunError
from icerelay.stun import Address, AttributeType, Message
from icerelay.stun.channeldata import decode_channel_data
from icerelay.turn.client.channels import Channels
from icerelay.turn.client.events import AllocationCounters, DataReceived
from icerelay.turn.client.permissions import Permissions


def data_indication(
    message: Message, permissions: Permissions, counters: AllocationCounters, now: float
) -> DataReceived | None:
    """The data in a Data indication (RFC 8656 §11.6)."""
    peer = message.get(AttributeType.XOR_PEER_ADDRESS)
    data = message.get(AttributeType.DATA)
    if not isinstance(peer, Address) or not isinstance(data, bytes):
        # Discard without XOR-PEER-ADDRESS. Without DATA it is an ICMP report, which this
        # client does not surface.
        counters.ignored += 1
        return None
    permission = permissions.get(peer.host)
    if permission is None or not (permission.active or permission.pending):
        # The server should not have relayed this; it is not for us.
        counters.ignored += 1
        return None
    permission.last_used = now
    counters.data_indications_received += 1
    counters.bytes_received += len(data)
    return DataReceived(peer, data)


def channel_data(
    frame: bytes,
    channels: Channels,
    permissions: Permissions,
    counters: AllocationCounters,
    now: float,
) -> DataReceived | None:
    """The data in a ChannelData message (RFC 8656 §12.6)."""
    try:
        number, data = decode_channel_data(frame)
    except StunError:
        counters.malformed += 1
        return None
    channel = channels.for_number(number)
    # The server may start using the channel before its ChannelBind success reaches us.
    if channel is None or not (channel.bound or channel.pending):
        counters.ignored += 1
        return None
    channel.last_used = now
    permission = permissions.get(channel.peer.host)
    if permission is not None:
        permission.last_used = now
    counters.channel_data_received += 1
    counters.bytes_received += len(data)
    return DataReceived(channel.peer, data)
