"""rtp.conf reading is documented never to raise for bad values (issue 10's fuzz corpus)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from icerelay.ice.rtpconf import parse_rtp_conf

HUGE = "9" * 5000
VALUES = st.one_of(
    st.text(alphabet="0123456789²³٣\uff10-+_ :.[]abc", max_size=12),
    st.just(HUGE),
    st.text(max_size=12),
)


@given(VALUES)
@example("host:²")
@example("stun.example.com:٣")
@example(f"192.0.2.1:{HUGE}")
def test_stunaddr(value: str) -> None:
    settings = parse_rtp_conf(f"[general]\nicesupport=yes\nstunaddr={value}\n")
    stun = settings.stun_server
    assert stun is None or 0 < stun.port < 65536


@given(VALUES, VALUES)
@example("10000", HUGE)
@example(HUGE, "20000")
@example("1²", "٣0000")
def test_rtp_port_range(start: str, end: str) -> None:
    settings = parse_rtp_conf(f"[general]\nrtpstart={start}\nrtpend={end}\n")
    low, high = settings.port_range
    assert 1024 <= low < high <= 65535


@given(VALUES)
@example(HUGE)
@example("٣")
def test_turnaddr(value: str) -> None:
    settings = parse_rtp_conf(f"[general]\nturnaddr={value}\nturnusername=u\nturnpassword=p\n")
    turn = settings.turn_server
    assert turn is None or 0 < turn.port < 65536
