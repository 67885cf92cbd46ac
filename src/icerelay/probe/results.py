"""What a probe found: the mapped address and RTT, and the RFC 5780 / RFC 4787 classification."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from icerelay.stun import Address


class Behavior(StrEnum):
    """RFC 4787 mapping and filtering behaviours (the same three words for both)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


@dataclass(frozen=True, slots=True)
class BindingResult:
    """One successful Binding transaction."""

    destination: Address
    source: Address
    mapped: Address
    rtt: float
    response_origin: Address | None
    other_address: Address | None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Everything a probe learnt. ``mapping``/``filtering`` are None when not run or unknown,
    and ``notes`` says why."""

    server: Address
    transport: str
    local: Address
    first: BindingResult
    behavior_requested: bool
    mapping: Behavior | None = None
    filtering: Behavior | None = None
    notes: tuple[str, ...] = ()

    @property
    def mapped(self) -> Address:
        return self.first.mapped

    @property
    def rtt(self) -> float:
        return self.first.rtt

    @property
    def behind_nat(self) -> bool:
        """True when the server saw another address than ours (RFC 5780 §4.3 test I)."""
        return self.first.mapped != self.local

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``stun-probe --json``)."""
        data: dict[str, Any] = {
            "server": str(self.server),
            "transport": self.transport,
            "local": str(self.local),
            "mapped": str(self.mapped),
            "rtt_ms": round(self.rtt * 1000, 3),
            "response_origin": _opt(self.first.response_origin),
            "other_address": _opt(self.first.other_address),
            "behind_nat": self.behind_nat,
        }
        if self.behavior_requested:
            data["mapping"] = None if self.mapping is None else self.mapping.value
            data["filtering"] = None if self.filtering is None else self.filtering.value
        data["notes"] = list(self.notes)
        return data

    def to_text(self) -> str:
        """Human-readable lines (``stun-probe`` default output)."""
        rows = [
            ("server", f"{self.server} ({self.transport})"),
            ("local", str(self.local)),
            ("mapped", str(self.mapped)),
            ("rtt", f"{self.rtt * 1000:.3f} ms"),
        ]
        if self.first.response_origin is not None:
            rows.append(("response origin", str(self.first.response_origin)))
        if self.first.other_address is not None:
            rows.append(("other address", str(self.first.other_address)))
        if self.behavior_requested:
            rows.append(("nat", "yes" if self.behind_nat else "no (mapped address is local)"))
            for name, value in (("mapping", self.mapping), ("filtering", self.filtering)):
                rows.append((name, "unknown" if value is None else value.value))
        rows += [("note", note) for note in self.notes]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _opt(address: Address | None) -> str | None:
    return None if address is None else str(address)
