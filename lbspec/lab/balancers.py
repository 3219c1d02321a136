"""Load balancers the lab can install.  Each has ``install(lab)`` and ``remove(lab)``.

:class:`NftablesDnat` is an L4 NAT load balancer made of nftables rules:
DNAT to backends chosen by ``numgen`` (round robin), conntrack translating
replies back.  Faults can be switched on to see the monitor catch them:
random drops, stateless rewriting of one UDP flow, dropping IP fragments after the first.

:class:`Haproxy` (TCP mode) and :class:`NginxStream` (nginx's ``stream``
module) are proxies: they run as processes in the LB namespace, from a
configuration file or its text, with the VIP made a local address there.
Their processes are the lab's (``lab.resources``), so they stop with it even
when a test fails.  ``Haproxy.unavailable()`` and ``NginxStream.unavailable()``
say why one cannot run here (None if it can).
"""

from __future__ import annotations

import abc
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lbspec.lab.netns import LabError, run
from lbspec.lab.topology import BRIDGE_MAC, host_prefix

__all__ = ["Forward", "NftablesDnat", "NftablesDsr", "Haproxy", "NginxStream", "STREAM_MODULE"]

STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")  # Debian's libnginx-mod-stream


@dataclass(frozen=True)
class Forward:
    """Traffic to ``proto`` ``port`` of the VIP, balanced over ``targets`` ((address, port) pairs)."""

    proto: str
    port: int
    targets: Sequence[tuple[str, int]]


@dataclass
class NftablesDnat:
    """Destination NAT with nftables, round robin over the targets, in the VIP's family (``ip`` or ``ip6``).

    ``drop_percent`` drops that share of packets to the VIP at random (before
    conntrack); ``drop_reply_percent`` that share of the UDP replies the
    backends send back through it; with ``tcp_data``, both take TCP segments
    that carry data instead (a client or backend sends them again soon, and
    the connection goes on), and :meth:`dropped` says how many they took.
    ``rewrite_udp_sport`` = (old, new) rewrites the source port of
    one UDP flow, packet by packet, after NAT; ``drop_later_fragments`` drops
    IP fragments after the first: ``"ingress"`` those to the VIP, before
    conntrack reassembles them (its defragmentation hooks in at priority
    -400), so whole datagrams are lost; ``"egress"`` those on their way to the
    backends, on ``device`` (the lab's bridge toward them, by default), so
    only the first fragment of each datagram gets there.  ``masquerade``
    also rewrites the source of what goes to the backends to the LB's own
    address there (full NAT: ``mode snat``), as an LB in front of backends
    that do not route back through it must.  ``stateless`` translates packet
    by packet, with no connection tracking: each packet to the VIP goes to the
    next target, and the targets' answers are translated back -- an LB that
    forgets its connections, which breaks every TCP connection it carries
    (the targets of a forward then share one port).  A target listed twice
    takes twice the share.

    Conntrack reassembles fragmented datagrams before NAT and cuts them again
    at the sizes they came in, keeping the IP ID: the backend side shows the
    client's fragments, translated.
    """

    vip: str
    forwards: Sequence[Forward]
    drop_percent: int = 0
    drop_reply_percent: int = 0
    tcp_data: bool = False
    rewrite_udp_sport: tuple[int, int] | None = None
    drop_later_fragments: str = ""  # "", "ingress" or "egress"
    masquerade: bool = False
    stateless: bool = False
    device: str = ""  # where "egress" drops them
    table: str = "lbspec"
    script: str = field(default="", init=False)

    def install(self, lab) -> None:
        self.device = self.device or lab.backend_interface
        self.script = self.render()
        run(lab.lb.argv(["nft", "-f", "-"]), input=self.script)

    def remove(self, lab) -> None:
        run(lab.lb.argv(["nft", "delete", "table", self.family, self.table]), check=False)
        if self.drop_later_fragments == "egress":
            run(lab.lb.argv(["nft", "delete", "table", "netdev", self.table]), check=False)

    @property
    def family(self) -> str:
        return _family(self.vip)

    def _balance(self) -> list[str]:
        ip, lines = self.family, ["  chain balance {", "    type nat hook prerouting priority dstnat; policy accept;"]
        for forward in self.forwards:
            choices = ", ".join(f"{i} : {address} . {port}" for i, (address, port) in enumerate(forward.targets))
            lines.append(f"    {ip} daddr {self.vip} {forward.proto} dport {forward.port} dnat {ip} addr . port to "
                         f"numgen inc mod {len(forward.targets)} map {{ {choices} }}")
        return lines + ["  }"]

    def _stateless(self) -> list[str]:
        ip = self.family
        untracked = ["  chain untracked {", "    type filter hook prerouting priority raw; policy accept;",
                     f"    {ip} daddr {self.vip} notrack"]
        back = ["  chain back {", "    type filter hook forward priority filter; policy accept;"]
        for forward in self.forwards:
            ports = {port for _address, port in forward.targets}
            if len(ports) != 1:
                raise LabError(f"a stateless forward sends to one port, not {sorted(ports)}")
            (port,), addresses = ports, sorted({address for address, _port in forward.targets})
            choices = ", ".join(f"{i} : {address}" for i, (address, _port) in enumerate(forward.targets))
            untracked += [f"    {ip} saddr {{ {', '.join(addresses)} }} {forward.proto} sport {port} notrack",
                          f"    {ip} daddr {self.vip} {forward.proto} dport {forward.port} {ip} daddr set numgen inc "
                          f"mod {len(forward.targets)} map {{ {choices} }} {forward.proto} dport set {port}"]
            back.append(f"    {ip} saddr {{ {', '.join(addresses)} }} {forward.proto} sport {port} {ip} saddr set "
                        f"{self.vip} {forward.proto} sport set {forward.port}")
        return untracked + ["  }"] + back + ["  }"]

    def dropped(self, lab) -> int:
        """How many packets the drop rules took so far."""
        return counted(lab, self.family, self.table)

    def render(self) -> str:
        ip = self.family
        later = "frag frag-off != 0" if ip == "ip6" else "ip frag-off & 0x1fff != 0"  # a fragment after the first
        lines = [f"table {ip} {self.table} {{"]
        data = "meta l4proto tcp meta length > 100 " if self.tcp_data else ""  # (an ACK with options: 52 or 72)
        lossy = "numgen random mod 100 < {} counter drop".format
        if self.drop_percent:
            lines += ["  chain faults {", "    type filter hook prerouting priority raw; policy accept;",
                      f"    {ip} daddr {self.vip} {data}{lossy(self.drop_percent)}", "  }"]
        if self.drop_later_fragments == "ingress":
            lines += ["  chain fragments {", "    type filter hook prerouting priority -450; policy accept;",
                      f"    {ip} daddr {self.vip} {later} drop", "  }"]
        lines += self._stateless() if self.stateless else self._balance()
        if self.masquerade:
            lines += ["  chain source {", "    type nat hook postrouting priority srcnat; policy accept;",
                      f'    oifname "{self.device}" masquerade', "  }"]
        if self.rewrite_udp_sport:
            old, new = self.rewrite_udp_sport
            lines += ["  chain rewrite {", "    type filter hook forward priority filter; policy accept;",
                      f"    udp sport {old} udp sport set {new}", "  }"]
        if self.drop_reply_percent:
            lines += ["  chain replies {", "    type filter hook forward priority filter; policy accept;",
                      f"    ct direction reply {data or 'meta l4proto udp '}{lossy(self.drop_reply_percent)}", "  }"]
        lines.append("}")
        if self.drop_later_fragments == "egress":  # after conntrack cut the datagrams again, before the wire
            lines += [f"table netdev {self.table} {{", "  chain fragments {",
                      f'    type filter hook egress device "{self.device}" priority 0; policy accept;',
                      f"    {later} drop", "  }", "}"]
        return "\n".join(lines) + "\n"


@dataclass
class NftablesDsr:
    """Direct server return with nftables: each frame to the VIP gets the MAC address of one of
    ``backends`` (the lab's names for them), picked by a hash of the client's address and port, and goes on
    to the backends' bridge otherwise unchanged (the netdev family, at the ingress of the LB's client-side
    interface).  The backends must hold the VIP (:meth:`Lab.hold_vip`); their answers go to the client
    untranslated, routed (not balanced) by the LB's namespace.

    ``drop_percent`` drops that share of frames to the VIP at random.
    """

    vip: str
    backends: Sequence[str]
    drop_percent: int = 0
    table: str = "lbspec_dsr"
    script: str = field(default="", init=False)

    def install(self, lab) -> None:
        self.script = self.render(lab.client_interface, lab.backend_interface, [lab.backends[n].mac for n in
                                                                                 self.backends])
        run(lab.lb.argv(["nft", "-f", "-"]), input=self.script)

    def remove(self, lab) -> None:
        run(lab.lb.argv(["nft", "delete", "table", "netdev", self.table]), check=False)

    def render(self, ingress: str, egress: str, macs: Sequence[str]) -> str:
        ip = _family(self.vip)
        choices = ", ".join(f"{i} : {mac}" for i, mac in enumerate(macs))
        lines = [f"table netdev {self.table} {{", "  chain dsr {",
                 f'    type filter hook ingress device "{ingress}" priority 0; policy accept;']
        if self.drop_percent:
            lines.append(f"    {ip} daddr {self.vip} numgen random mod 100 < {self.drop_percent} drop")
        lines += [f"    {ip} daddr {self.vip} ether saddr set {BRIDGE_MAC} ether daddr set jhash {ip} saddr . th sport "
                  f'mod {len(macs)} map {{ {choices} }} fwd to "{egress}"', "  }", "}"]
        return "\n".join(lines) + "\n"


def counted(lab, family: str, table: str) -> int:
    """How many packets the counters of an nftables table in the LB's namespace have counted."""
    listing = json.loads(lab.lb.run("nft", "-j", "list", "table", family, table))
    return sum(e["counter"]["packets"] for item in listing["nftables"] for e in item.get("rule", {}).get("expr", ())
               if "counter" in e)


def _family(vip: str) -> str:
    """nftables' name for the VIP's address family."""
    return "ip6" if ":" in vip else "ip"


class _Proxy(abc.ABC):
    """A proxy process in the LB namespace, the VIP a local address there (on ``lo``) while it runs."""

    program = ""
    package = ""

    def __init__(self, config: str | Path):
        self.config = config
        self.directory: Path | None = None
        self.process: subprocess.Popen | None = None
        self._vip: str | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this proxy cannot run here (its program is not installed), or None."""
        if shutil.which(cls.program) is None:
            return f"{cls.program} is not installed (Debian: apt-get install {cls.package})"
        return None

    def install(self, lab) -> None:
        reason = self.unavailable()
        if reason is not None:
            raise LabError(reason)
        self.directory = Path(tempfile.mkdtemp(prefix=f"lbspec-{self.program}-"))
        try:
            argv = self.prepare(self.directory)
            self._add_vip(lab)  # before the check: `nginx -t` binds its listeners
            self._check(lab, argv)
            log = open(self.directory / "output.log", "w")
            try:
                self.process = lab.resources.spawn(lab.lb.argv(argv), stdout=log)
            finally:
                log.close()
            self._await_listening(lab)
        except BaseException:
            self.remove(lab)
            raise

    def remove(self, lab) -> None:
        if self.process is not None:
            lab.resources.stop(self.process)
            self.process = None
        if self._vip is not None and lab.lb is not None:
            lab.lb.run("ip", "addr", "del", self._vip, "dev", "lo", check=False)
            self._vip = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    @property
    def text(self) -> str:
        """The configuration as given (read from its file if a path was given)."""
        return self.config_path().read_text() if self.config_path() is not None else str(self.config)

    def config_path(self) -> Path | None:
        """The file given, or None when the configuration was given as text."""
        if isinstance(self.config, Path):
            return self.config
        return Path(self.config) if "\n" not in self.config and "{" not in self.config else None

    @abc.abstractmethod
    def prepare(self, directory: Path) -> list[str]:
        """Write what the program needs into ``directory``; the command that runs it in the foreground."""

    @abc.abstractmethod
    def check_argv(self, argv: list[str]) -> list[str]:
        """The command that checks the configuration, given the one that runs it."""

    def _check(self, lab, argv: list[str]) -> None:
        path = self.config_path()
        if path is not None and not path.is_file():
            raise LabError(f"{self.program} configuration {path} does not exist")
        done = subprocess.run(lab.lb.argv(self.check_argv(argv)), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise LabError(f"{self.program} refuses its configuration: {(done.stderr or done.stdout).strip()}")

    def _add_vip(self, lab) -> None:
        vip = host_prefix(lab.vip)
        present = lab.lb.run("ip", "-o", "addr", "show", "dev", "lo")
        if f" {vip} " not in present:
            lab.lb.run("ip", "addr", "add", vip, "dev", "lo")
            self._vip = vip

    def _await_listening(self, lab, timeout: float = 15.0) -> None:
        """Until a socket of the process is bound (each binds all of its sockets before it serves)."""
        owner = f"pid={self.process.pid},"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabError(f"{self.program} exited ({self.process.returncode}) before it listened: "
                               f"{self._output()}")
            if owner in lab.lb.run("ss", "-Hlntup", timeout=5):
                return
            time.sleep(0.05)
        raise LabError(f"{self.program} did not listen within {timeout}s: {self._output()}")

    def _output(self) -> str:
        text = (self.directory / "output.log").read_text() if self.directory else ""
        if self.process is not None and self.process.stderr is not None and self.process.poll() is not None:
            text += self.process.stderr.read()
        return text.strip()[-2000:]


class Haproxy(_Proxy):
    """HAProxy in the foreground (``haproxy -f CONFIG -db``), from a configuration file or its text.

    The configuration is used as it is: its ``bind`` lines should name the lab's
    VIP (192.0.2.10) and its servers the backends (10.0.2.11, ...).
    """

    program, package = "haproxy", "haproxy"

    def prepare(self, directory: Path) -> list[str]:
        path = self.config_path()
        if path is None:
            path = directory / "haproxy.cfg"
            path.write_text(str(self.config))
        return ["haproxy", "-f", str(path), "-db"]

    def check_argv(self, argv: list[str]) -> list[str]:
        return ["haproxy", "-c", "-q", "-f", argv[2]]


class NginxStream(_Proxy):
    """nginx with its ``stream`` module, from a configuration file or its text (``events {}`` and ``stream {}``).

    The configuration is included from a main file in a private directory that
    loads the stream module (Debian's, unless the configuration loads it or nginx
    has it built in), keeps nginx in the foreground and puts its pid file and
    error log there (``-p``/``-e``/``-c``), so nothing of the host's nginx is
    touched.  ``daemon``, ``pid`` and ``load_module`` in the configuration win.
    """

    program, package = "nginx", "nginx libnginx-mod-stream"

    def prepare(self, directory: Path) -> list[str]:
        path = self.config_path()
        if path is None:
            path = directory / "stream.conf"
            path.write_text(str(self.config))
        text = path.read_text()
        lines = [] if _directive(text, "load_module") else self._load_stream()
        lines += [] if _directive(text, "daemon") else ["daemon off;"]
        lines += [] if _directive(text, "pid") else [f"pid {directory / 'nginx.pid'};"]
        lines += [f"error_log {directory / 'error.log'} notice;", f"include {path.resolve()};"]
        main = directory / "nginx.conf"
        main.write_text("\n".join(lines) + "\n")
        return ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(main)]

    def check_argv(self, argv: list[str]) -> list[str]:
        return ["nginx", "-t", "-q", *argv[1:]]

    @staticmethod
    def _load_stream() -> list[str]:
        if STREAM_MODULE.is_file():
            return [f"load_module {STREAM_MODULE};"]
        built = subprocess.run(["nginx", "-V"], capture_output=True, text=True, timeout=10).stderr
        if "--with-stream " in built + " ":
            return []
        raise LabError(f"nginx's stream module is missing: no {STREAM_MODULE} and nginx is not built with it "
                       "(Debian: apt-get install libnginx-mod-stream)")


def _directive(text: str, name: str) -> bool:
    """Whether the configuration gives ``name`` at the start of a line (main-context directives do)."""
    return re.search(rf"^\s*{name}\s", text, re.MULTILINE) is not None
