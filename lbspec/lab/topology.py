"""A load balancer lab in network namespaces: a client, the LB, and backends on a bridge.

::

    client ns          lb ns                               backend ns (one each)
    10.0.1.2 --veth-- 10.0.1.1  [LB: nftables, HAProxy...]  bridge 10.0.2.1 --veth-- 10.0.2.11, .12, ...

The client routes everything (the VIP included) through the LB; backends
route their replies through it too.  Addresses live inside the namespaces, so
nothing reaches the host's network.  ``Lab(family=6)`` builds the same lab in
IPv6 (``fd00:1::2``, ``fd00:2::11``..., the VIP ``2001:db8::10``), its
captures with the neighbour discovery and multicast listener chatter of a
real IPv6 network; an IPv4 lab has IPv6 switched off.

::

    with Lab(["b1", "b2", "b3"]) as lab:
        lab.serve(tcp=[8080], udp=[5353])
        lab.install(NftablesDnat(...))
        with lab.capture(directory) as capture:
            results = lab.traffic(tcp=["192.0.2.10:80"], connections=20)
        capture.client_side, capture.backend_side
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lbspec.lab.netns import LabError, Namespace, Resources, run, unique_prefix

__all__ = ["Lab", "BackendHost", "LoadBalancer", "Addressing", "IPV4", "IPV6", "BRIDGE_MAC", "host_prefix"]

_BLOCK = """table inet lbspec_block {
  chain input { type filter hook input priority -10; policy drop; }
  chain output { type filter hook output priority -10; policy drop; }
}
"""

CLIENT, LB_CLIENT_SIDE, LB_BACKEND_SIDE, VIP = "10.0.1.2", "10.0.1.1", "10.0.2.1", "192.0.2.10"
BRIDGE_MAC = "02:00:00:00:02:01"  # the LB's bridge toward the backends


@dataclass(frozen=True)
class Addressing:
    """A lab's addresses in one family: the client's, the LB's on each side, the VIP, and the backends'
    (``backend_base`` followed by 11, 12, ...) on networks of ``length`` bits."""

    family: int
    client: str
    lb_client_side: str
    lb_backend_side: str
    vip: str
    backend_base: str
    length: int
    wildcard: str  # the address servers listen on: every address of the host

    def backend(self, index: int) -> str:
        return f"{self.backend_base}{11 + index}"


def host_prefix(address: str) -> str:
    """``address`` as a network of its own: ``/32`` (IPv4) or ``/128`` (IPv6)."""
    return f"{address}/{128 if ':' in address else 32}"


IPV4 = Addressing(4, CLIENT, LB_CLIENT_SIDE, LB_BACKEND_SIDE, VIP, "10.0.2.", 24, "0.0.0.0")
IPV6 = Addressing(6, "fd00:1::2", "fd00:1::1", "fd00:2::1", "2001:db8::10", "fd00:2::", 64, "::")


class LoadBalancer(Protocol):
    """What the lab needs of a load balancer: to be installed in the LB namespace and removed."""

    def install(self, lab: Lab) -> None: ...

    def remove(self, lab: Lab) -> None: ...


@dataclass
class BackendHost:
    name: str
    address: str
    namespace: Namespace | None
    interface: str  # its end of the veth, on the LB's bridge
    mac: str = ""


class Lab:
    """Namespaces for a client, an LB and backends; see the module docstring.  Always use ``with``."""

    def __init__(self, backends: Sequence[str] = ("b1", "b2"), vip: str | None = None, family: int = 4):
        if family not in (4, 6):
            raise ValueError(f"family {family}: a lab is IPv4 (4) or IPv6 (6)")
        self.prefix = unique_prefix()
        self.addressing = IPV6 if family == 6 else IPV4
        self.vip = vip or self.addressing.vip
        self.names = list(backends)
        self.resources = Resources()
        self.backends: dict[str, BackendHost] = {}
        self.balancer: LoadBalancer | None = None
        self.client = self.lb = None
        self.servers: dict[str, list] = {}  # backend name -> its server processes
        self._served: dict[str, list[list[str]]] = {}  # backend name -> how its servers were started

    # ------------------------------------------------------------ building --

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def client_interface(self) -> str:
        """The LB's interface toward the client."""
        return f"{self.prefix}C"

    @property
    def backend_interface(self) -> str:
        """The LB's bridge toward the backends."""
        return f"{self.prefix}br"

    def _build(self) -> None:
        r, p, a = self.resources, self.prefix, self.addressing
        self.client, self.lb = r.namespace(f"{p}-client"), r.namespace(f"{p}-lb")
        for namespace in (self.client, self.lb):
            self._family_only(namespace)
        self.lb.sysctl("net.ipv6.conf.all.forwarding" if a.family == 6 else "net.ipv4.ip_forward", "1")
        self._plain_bridge()
        self._veth(self.client, f"{p}c", self.lb, self.client_interface)
        self._address(self.client, a.client, f"{p}c")
        self.client.ip("route", "add", "default", "via", a.lb_client_side)
        self._address(self.lb, a.lb_client_side, self.client_interface)
        # a fixed address: a bridge otherwise takes its ports' lowest, and a change flushes its neighbours
        self.lb.ip("link", "add", self.backend_interface, "address", BRIDGE_MAC, "type", "bridge")
        self._address(self.lb, a.lb_backend_side, self.backend_interface)
        self.lb.ip("link", "set", self.backend_interface, "up")
        for index, name in enumerate(self.names):
            self._backend(index, name)

    def _plain_bridge(self) -> None:
        """Where br_netfilter is loaded (Docker loads it), the LB's bridge passes what its ports receive
        through the IP hooks before the bridge -- and a capture on it -- sees it: a full-NAT LB's replies
        from the backends would be captured with the client's address already put back, as no capture on
        an LB's own interface shows them.  Off in the LB's namespace, the bridge is its interface."""
        if os.path.isdir("/proc/sys/net/bridge"):
            for key in ("iptables", "ip6tables", "arptables"):
                self.lb.sysctl(f"net.bridge.bridge-nf-call-{key}", "0")

    def _address(self, namespace: Namespace, address: str, device: str) -> None:
        namespace.ip("addr", "add", f"{address}/{self.addressing.length}", "dev", device)

    def _family_only(self, namespace: Namespace) -> None:
        """An IPv4 lab switches IPv6 off, to keep its captures free of neighbour discovery chatter.  An IPv6
        lab's interfaces skip duplicate address detection: it would keep each address -- the link-local
        ones too, which neighbour discovery needs -- unusable for a second or so, and the first packets
        through the LB would be lost."""
        if self.addressing.family == 4:
            _quiet(namespace)
        else:
            for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
                namespace.sysctl(key, "0")

    def _veth(self, one: Namespace, one_end: str, other: Namespace, other_end: str) -> None:
        run(["ip", "link", "add", one_end, "netns", one.name, "type", "veth", "peer", "name", other_end,
             "netns", other.name])
        one.ip("link", "set", one_end, "up")
        other.ip("link", "set", other_end, "up")

    def _backend(self, index: int, name: str) -> None:
        p = self.prefix
        namespace = self.resources.namespace(f"{p}-{name}")
        self._family_only(namespace)
        address = self.addressing.backend(index)
        inside, outside = f"{p}b{index}", f"{p}B{index}"
        self._veth(namespace, inside, self.lb, outside)
        self.lb.ip("link", "set", outside, "master", self.backend_interface)
        self._address(namespace, address, inside)
        namespace.ip("route", "add", "default", "via", self.addressing.lb_backend_side)
        mac = json.loads(namespace.ip("-j", "link", "show", inside))[0]["address"]
        self.backends[name] = BackendHost(name, address, namespace, outside, mac)

    def close(self) -> None:
        """Stop everything the lab started and delete its namespaces (idempotent)."""
        if self.balancer is not None and self.lb is not None:
            try:
                self.balancer.remove(self)
            except LabError:
                pass
            self.balancer = None
        self.resources.close()

    # ------------------------------------------------------------- driving --

    def address(self, name: str) -> str:
        return self.backends[name].address

    def serve(self, tcp: Sequence[int] = (8080,), udp: Sequence[int] = (5353,), names: Sequence[str] | None = None,
              slow: float = 0.5):
        """Start an echo server (lbspec.lab.servers) in each backend namespace; ``slow`` is how late a
        slowed backend (:meth:`slow_backend`) answers."""
        for name in names or self.names:
            host = self.backends[name]
            argv = [sys.executable, "-m", "lbspec.lab.servers", "--name", name, "--slow", str(slow),
                    "--address", self.addressing.wildcard]
            argv += [x for port in tcp for x in ("--tcp", str(port))]
            argv += [x for port in udp for x in ("--udp", str(port))]
            process = self.resources.spawn(host.namespace.argv(argv), ready="ready", timeout=15)
            self.servers.setdefault(name, []).append(process)
            self._served.setdefault(name, []).append(argv)

    # -------------------------------------------------------------- faults --
    # Each fault has its undoing; none touches the LB, which must find out for itself.

    def kill_backend(self, name: str) -> None:
        """The backend's server processes die (SIGKILL); the host stays up, so its kernel refuses
        what comes: a TCP RST to a SYN, an ICMP port unreachable to a datagram."""
        for process in self.servers.pop(name, []):
            self.resources.stop(process, signal.SIGKILL)

    def restart_backend(self, name: str) -> None:
        """Start the backend's servers again as :meth:`serve` first started them."""
        if self.servers.get(name):
            return
        host = self.backends[name]
        for argv in self._served.get(name, []):
            process = self.resources.spawn(host.namespace.argv(argv), ready="ready", timeout=15)
            self.servers.setdefault(name, []).append(process)

    def block_backend(self, name: str) -> None:
        """An nftables rule in the backend's namespace drops everything in and out: the LB sees silence."""
        self._host_namespace(name).run("nft", "-f", "-", input=_BLOCK)

    def unblock_backend(self, name: str) -> None:
        self._host_namespace(name).run("nft", "delete", "table", "inet", "lbspec_block", check=False)

    def slow_backend(self, name: str, slow: bool = True) -> None:
        """The backend's servers answer ``slow`` seconds late (see :meth:`serve`), or on time again."""
        for process in self.servers.get(name, []):
            os.killpg(process.pid, signal.SIGUSR1 if slow else signal.SIGUSR2)

    def hold_vip(self, names: Sequence[str] | None = None) -> None:
        """The backends (all, or ``names``) hold the VIP, on ``lo``, as direct server return needs: they
        take packets to it and answer from it, but do not claim it on their link (IPv4: no ARP replies
        for it, nor it as the source of their own ARP requests; IPv6 answers neighbour solicitations
        only for addresses of the interface asked)."""
        for name in names or self.names:
            namespace = self._host_namespace(name)
            if ":" not in self.vip:
                namespace.sysctl("net.ipv4.conf.all.arp_ignore", "1")
                namespace.sysctl("net.ipv4.conf.all.arp_announce", "2")
            namespace.run("ip", "addr", "add", host_prefix(self.vip), "dev", "lo")

    def _host_namespace(self, name: str) -> Namespace:
        namespace = self.backends[name].namespace
        if namespace is None:
            raise LabError(f"backend {name} was removed from the lab")
        return namespace

    def install(self, balancer: LoadBalancer) -> None:
        if self.balancer is not None:
            self.balancer.remove(self)
        balancer.install(self)
        self.balancer = balancer

    def remove_backend(self, name: str) -> None:
        """The backend is gone: its namespace is deleted, but the LB still knows its MAC,
        so what it sends there leaves on the bridge (and into the capture) unanswered."""
        host = self.backends[name]
        for process in self.servers.pop(name, []):
            self.resources.stop(process)  # a process inside would keep the namespace alive
        self.resources.forget_namespace(host.namespace.name)
        _wait_gone(self.lb, host.interface)  # the kernel removes the veth after the namespace, in its own time
        self.lb.ip("neigh", "replace", host.address, "lladdr", host.mac, "dev", self.backend_interface,
                   "nud", "permanent")
        host.namespace = None

    def capture(self, directory: str | os.PathLike, combined: bool = False, tool: str = "auto"):
        from lbspec.lab.capture import Capture

        return Capture(self, directory, combined, tool)

    def traffic(self, tcp: Sequence[str] = (), udp: Sequence[str] = (), connections: int = 10, messages: int = 2,
                datagrams: int = 10, interval: float = 0.02, timeout: float = 1.0, deadline: float = 30.0,
                udp_source_port: int | None = None, udp_size: int = 0, tcp_size: int = 0,
                tcp_reuse: int = 0) -> list[dict]:
        """Run bounded client traffic (lbspec.lab.traffic) in the client namespace; who answered each.
        ``udp_size`` pads datagrams to that many bytes (past 1472, the client sends them as IP fragments);
        ``tcp_size`` pads TCP messages; with ``tcp_reuse``, each source port carries that many connections in
        a row (a client that reuses its ports)."""
        argv = [sys.executable, "-m", "lbspec.lab.traffic", "--connections", str(connections), "--messages",
                str(messages), "--datagrams", str(datagrams), "--interval", str(interval), "--timeout", str(timeout),
                "--deadline", str(deadline)]
        argv += [x for t in tcp for x in ("--tcp", t)] + [x for t in udp for x in ("--udp", t)]
        if udp_source_port:
            argv += ["--udp-source-port", str(udp_source_port)]
        if udp_size:
            argv += ["--udp-size", str(udp_size)]
        if tcp_size:
            argv += ["--tcp-size", str(tcp_size)]
        if tcp_reuse:
            argv += ["--tcp-reuse", str(tcp_reuse)]
        return json.loads(self.client.run(*argv, timeout=deadline + 30))


def _wait_gone(namespace: Namespace, interface: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if namespace.run("ip", "link", "show", interface, check=False, timeout=5) == "":
            return
        time.sleep(0.05)
    raise LabError(f"{interface} still exists {timeout}s after its namespace was deleted")


def _quiet(namespace: Namespace) -> None:
    for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
        namespace.run("sysctl", "-qw", f"{key}=1", check=False)
