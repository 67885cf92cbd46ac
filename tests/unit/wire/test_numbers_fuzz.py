"""icerelay.numbers: ASCII digits only, bounded in length, never an exception (issue 10)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from icerelay.numbers import is_ascii_digits, leading_int, parse_port, parse_uint

# Non-ASCII digits str.isdigit() accepts: superscripts, Arabic-Indic, fullwidth, Devanagari.
UNICODE_DIGITS = "²³¹٣۵０५"
HUGE = "9" * 5000


@given(st.text())
@example("50³0")
@example("²")
@example("٣")
@example(HUGE)
@example("+1")
@example("1_000")
@example(" 1")
def test_parse_uint_is_none_or_the_ascii_value(text: str) -> None:
    value = parse_uint(text)
    ascii_digits = bool(text) and all("0" <= c <= "9" for c in text) and len(text) <= 20
    if ascii_digits:
        assert value == int(text)
    else:
        assert value is None


@given(st.text(alphabet="0123456789" + UNICODE_DIGITS + "+-_ :", max_size=12))
@example("65535")
@example("65536")
@example("0")
@example("00080")
def test_parse_port_only_accepts_ascii_ports(text: str) -> None:
    port = parse_port(text)
    if port is not None:
        assert text.isascii() and 1 <= port <= 65535 and int(text) == port
    zero = parse_port(text, allow_zero=True)
    assert zero == port or (zero == 0 and port is None)


def test_examples_from_the_issue() -> None:
    assert parse_port("50³0") is None
    assert parse_port("٣") is None
    assert parse_port(HUGE) is None
    assert parse_uint("123", max_digits=2) is None
    assert parse_uint("300", maximum=255) is None
    assert not is_ascii_digits("")
    assert leading_int("  -12abc") == -12
    assert leading_int("abc") is None
    assert leading_int(HUGE) is None
    assert leading_int("٣") is None


@given(st.text())
@example(HUGE)
def test_leading_int_never_raises(text: str) -> None:
    value = leading_int(text)
    assert value is None or abs(value) < 10**20
