"""Helpers for the end-to-end tests: the nftables DNAT balancer and its spec; for proxies (HAProxy,
nginx), import a config and run traffic around a fault; judge captures with `lbspec monitor`, all through
the CLI and its JSON output."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from lbspec.cli import main
from lbspec.lab import VIP, Forward, NftablesDnat

CONFIGS = Path(__file__).resolve().parent.parent / "importers" / "configs"
TARGET = f"{VIP}:80"
DNAT_SPEC = """
service web {{
    vip {vip}
    listen tcp 80, udp 53
    pool app {{
        {backends}
    }}
    forward tcp 80 to app
    forward udp 53 to app port 5353
    balance round_robin
    health tcp every 1s timeout 500ms fall 2 rise 2
}}
"""
DECLARED = ("b1", "b2")
# what the network driver's traces need said too: a connection keeps its backend while it is idle up to 30 s
DRIVER_SPEC = DNAT_SPEC.replace("    health tcp", "    affinity flow timeout 30s\n    health tcp")


def dnat_spec(directory: Path, lab, names=DECLARED, text: str = DNAT_SPEC) -> str:
    """A spec file for the DNAT balancer over backends ``names`` (``text``: the template)."""
    backends = "\n        ".join(f"backend {n} {endpoint(lab.address(n), 8080)}" for n in names)
    path = directory / "web.lbspec"
    path.write_text(text.format(vip=lab.vip, backends=backends))
    return str(path)


def endpoint(address: str, port: int) -> str:
    """``address:port``, the address in brackets if it is IPv6."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def dnat(lab, names=DECLARED, **faults) -> NftablesDnat:
    """The nftables DNAT balancer over backends ``names``: TCP 80 to 8080, UDP 53 to 5353."""
    return NftablesDnat(lab.vip, [Forward("tcp", 80, [(lab.address(n), 8080) for n in names]),
                                  Forward("udp", 53, [(lab.address(n), 5353) for n in names])], **faults)


def also(lab, hook: str, rule: str) -> str:
    """One more nftables rule in the LB, in a table of its own (returned), on ``hook`` (with its priority)."""
    lab.lb.run("nft", "-f", "-", input=f"table ip also {{\n chain c {{ type filter hook {hook}; policy accept;\n"
                                       f"  {rule}\n }}\n}}\n")
    return "also"


def imported(kind: str, config: Path, directory: Path, name: str = "imported.lbspec") -> str:
    """The spec `lbspec import` makes of ``config`` (the very file the proxy runs)."""
    path = directory / name
    err = io.StringIO()
    code = main(["import", kind, str(config), "-o", str(path), "-q"], io.StringIO(), err)
    assert code in (0, 1), err.getvalue()
    return str(path)


def imported_ruleset(lab, directory: Path) -> str:
    """The spec `lbspec import nftables` makes of the LB's live ruleset (`nft -j list ruleset` there)."""
    ruleset = directory / "ruleset.json"
    ruleset.write_text(lab.lb.run("nft", "-j", "list", "ruleset"))
    return imported("nftables", ruleset, directory)


def judged_clean(lab, directory: Path, spec: str):
    """TCP connections and UDP datagrams through ``lab``'s LB, all answered, judged by ``spec``: no verdict,
    every packet paired.  Returns the capture."""
    with lab.capture(directory) as capture:
        results = lab.traffic(tcp=[endpoint(lab.vip, 80)], udp=[endpoint(lab.vip, 53)], connections=8, datagrams=8,
                              messages=2)
    assert all(r["error"] is None for r in results)
    code, document = monitor(spec, capture)
    assert verdicts(document) == {} and code == 0
    assert document["monitor"]["pairing_rate"] == 1.0
    return capture


def run_monitor(*argv: str) -> tuple[int, dict]:
    """`lbspec monitor ARGV --format json`: its exit code (0 or 1) and document."""
    out, err = io.StringIO(), io.StringIO()
    code = main(["monitor", *argv, "--format", "json"], out, err)
    assert code in (0, 1), err.getvalue()
    return code, json.loads(out.getvalue())


def monitor(spec: str, capture) -> tuple[int, dict]:
    assert not capture.dropped, f"the capture lost {capture.dropped} packets: its verdicts would not be the LB's"
    return run_monitor(spec, "--client-side", str(capture.client_side), "--backend-side", str(capture.backend_side))


def udp_drops_are_flagged(lab, directory: Path, spec: str, code: str = "LB200") -> None:
    """UDP datagrams through ``lab``'s LB, installed to drop some at random (or the answers to them, with
    ``code`` LB215): each one lost is that verdict, and there is nothing else to say.  The lost are counted by
    the client, which sent them and got no answer."""
    with lab.capture(directory) as capture:
        results = lab.traffic(udp=[endpoint(lab.vip, 53)], datagrams=40, interval=0.01, timeout=0.2)
    lost = sum(1 for r in results if r["error"] is not None)
    assert lost > 0, "nothing was dropped: the fault was not injected"
    exit_code, document = monitor(spec, capture)
    found = verdicts(document)
    assert set(found) == {code} and exit_code == 1
    # a drop of the very last datagram (or answer) is at the capture's edge: it is judged only if something
    # captured after it (IPv6 neighbour discovery, say) shows its deadline passed
    at_edge = results[-1]["error"] is not None
    assert lost - at_edge <= sum(v["data"]["count"] for v in found[code]) <= lost


def tcp_drops_are_flagged(lab, directory: Path, fault: str, code: str) -> None:
    """``lab``'s DNAT drops some TCP segments that carry data (``fault``: clients' or backends'): TCP sends each
    again, that copy gets through, and the bytes are acknowledged -- the retransmission's, so each copy lost is
    flagged (``code``), once, and none is taken for a capture gap.  Counted by the LB's rule."""
    balancer = dnat(lab, tcp_data=True, **{fault: 15})
    lab.install(balancer)
    with lab.capture(directory) as capture:
        results = lab.traffic(tcp=[endpoint(lab.vip, 80)], connections=8, messages=10, tcp_size=1400, timeout=5)
    assert all(r["error"] is None and r["answers"] == 10 for r in results)
    dropped = balancer.dropped(lab)
    assert dropped > 0, "nothing was dropped: the fault was not injected"
    exit_code, document = monitor(dnat_spec(directory, lab), capture)
    found = verdicts(document)
    assert set(found) == {code} and exit_code == 1
    assert sum(v["data"]["count"] for v in found[code]) == dropped


def verdicts(document: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for item in document["diagnostics"]:
        if item["severity"] in ("error", "warning"):
            found.setdefault(item["code"], []).append(item)
    return found


def around(lab, directory: Path, fault=None, before: int = 6, after: int = 18, timeout: float = 0.5,
           udp: bool = False, pace: float = 0.25) -> tuple[list[dict], list[dict], object]:
    """Traffic, ``fault()`` (on b2, say), more traffic spread over time: all in one capture.

    The first traffic takes over a second (``pace`` apart): HAProxy starts its servers one failed check
    from down, and has them fully up only after a first good check, ``inter`` (1 s) in."""
    with lab.capture(directory) as capture:
        first = lab.traffic(tcp=[TARGET], udp=[f"{VIP}:53"] if udp else [], connections=before, datagrams=6,
                            interval=pace)
        if fault is not None:
            fault()
        then = lab.traffic(tcp=[TARGET], connections=after, interval=0.1, timeout=timeout)
    return first, then, capture


def answered(results: list[dict]) -> list[str | None]:
    return [r["answered_by"] for r in results if r["proto"] == "tcp"]


HALF_CLOSING_CLIENT = """
import socket, sys
answers = []
for k in range(4):
    connection = socket.create_connection((sys.argv[1], 80), timeout=5)
    connection.sendall(b"hello %d\\n" % k)
    connection.shutdown(socket.SHUT_WR)  # a FIN: no more to send, but the answer is still awaited
    answer = b""
    while True:
        piece = connection.recv(4096)
        if not piece:
            break
        answer += piece
    connection.close()
    answers.append(answer.split(b":")[0].decode() or "-")
print(" ".join(answers))
"""


def half_closing(lab, directory: Path) -> tuple[list[str], object]:
    """Four TCP connections whose client sends a line, half-closes (FIN) and reads the answer to the end,
    after a first round of ordinary traffic: who answered each ("-": nothing came), and the capture."""
    with lab.capture(directory) as capture:
        lab.traffic(tcp=[TARGET], connections=6, interval=0.25)
        answers = lab.client.run(sys.executable, "-c", HALF_CLOSING_CLIENT, lab.vip, timeout=60).split()
    return answers, capture
