"""Load balancers the lab can install.  Each has ``install(lab)`` and ``remove(lab)``.

:class:`NftablesDnat` is an L4 NAT load balancer made of nftables rules:
DNAT to backends chosen by ``numgen`` (round robin), conntrack translating
replies back.  Faults can be switched on to see the monitor catch them:
random drops, stateless rewriting of one UDP flow.  Other balancers (HAProxy,
nginx) plug in the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lbspec.lab.netns import run

__all__ = ["Forward", "NftablesDnat"]


@dataclass(frozen=True)
class Forward:
    """Traffic to ``proto`` ``port`` of the VIP, balanced over ``targets`` ((address, port) pairs)."""

    proto: str
    port: int
    targets: Sequence[tuple[str, int]]


@dataclass
class NftablesDnat:
    """Destination NAT with nftables, round robin over the targets.

    ``drop_percent`` drops that share of packets to the VIP at random (before
    conntrack); ``rewrite_udp_sport`` = (old, new) rewrites the source port of
    one UDP flow, packet by packet, after NAT.
    """

    vip: str
    forwards: Sequence[Forward]
    drop_percent: int = 0
    rewrite_udp_sport: tuple[int, int] | None = None
    table: str = "lbspec"
    script: str = field(default="", init=False)

    def install(self, lab) -> None:
        self.script = self.render()
        run(lab.lb.argv(["nft", "-f", "-"]), input=self.script)

    def remove(self, lab) -> None:
        run(lab.lb.argv(["nft", "delete", "table", "ip", self.table]), check=False)

    def render(self) -> str:
        lines = [f"table ip {self.table} {{"]
        if self.drop_percent:
            lines += ["  chain faults {", "    type filter hook prerouting priority raw; policy accept;",
                      f"    ip daddr {self.vip} numgen random mod 100 < {self.drop_percent} drop", "  }"]
        lines += ["  chain balance {", "    type nat hook prerouting priority dstnat; policy accept;"]
        for forward in self.forwards:
            choices = ", ".join(f"{i} : {address} . {port}" for i, (address, port) in enumerate(forward.targets))
            lines.append(f"    ip daddr {self.vip} {forward.proto} dport {forward.port} dnat ip addr . port to "
                         f"numgen inc mod {len(forward.targets)} map {{ {choices} }}")
        lines.append("  }")
        if self.rewrite_udp_sport:
            old, new = self.rewrite_udp_sport
            lines += ["  chain rewrite {", "    type filter hook forward priority filter; policy accept;",
                      f"    udp sport {old} udp sport set {new}", "  }"]
        lines.append("}")
        return "\n".join(lines) + "\n"
