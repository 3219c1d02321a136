"""The harness's network driver: traces played with real sockets against real load balancers in the lab.

A correct nftables DNAT passes a fixed trace and a short search; faulty ones
fail with their verdict code, and the captures of the failure reproduce it
through ``lbspec monitor``; faults become lab faults; HAProxy is driven in
proxy mode; and the plugin's ``lb_harness`` takes a network driver.  Skipped
(with the reason) only where network namespaces cannot be made.
"""

from __future__ import annotations

import textwrap
from ipaddress import ip_address

import pytest

import lbspec
import lbspec.runtime.session  # noqa: F401  (numpy loaded once; pytester's in-process runs unload modules)
from lbspec import strategies
from lbspec.harness import (CaptureLoss, Failure, Fault, Harness, LabMismatch, Network, SearchSettings, Segment,
                            Send, Trace, TraceTooLong)
from lbspec.lab import VIP, Haproxy

from .helpers import DECLARED, DRIVER_SPEC, dnat, dnat_spec, run_monitor

pytestmark = pytest.mark.e2e

PROXY_SPEC = """
service lab {
    vip 192.0.2.10
    listen tcp 80
    mode proxy
    pool app {
        backend app1 10.0.2.11:8080
        backend app2 10.0.2.12:8080
        backend app3 10.0.2.13:8080
    }
    forward tcp 80 to app
    balance round_robin
    health tcp every 1s timeout 1s fall 2 rise 1
}
"""
HAPROXY = """
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s

frontend lab
    bind 192.0.2.10:80
    default_backend app

backend app
    balance roundrobin
    default-server check inter 1s fall 2 rise 1
    server app1 10.0.2.11:8080
    server app2 10.0.2.12:8080
    server app3 10.0.2.13:8080
"""
SEED = 20240601


def _spec(tmp_path, lab, names=DECLARED) -> str:
    return dnat_spec(tmp_path, lab, names, DRIVER_SPEC)


def _segment(proto: str, client: str, sport: int, dport: int, flags=(), payload=b"") -> Segment:
    return Segment(proto, ip_address(client), ip_address(VIP), sport, dport, frozenset(flags), payload=payload)


def connection(start: float, flow: int, client: str = "198.51.100.1", messages: int = 2, gap: float = 0.005
               ) -> list[Send]:
    """A TCP flow: its SYN, then ``messages`` payloads ``gap`` apart."""
    sport = 1023 + flow
    events = [Send(start, _segment("tcp", client, sport, 80, {"syn"}), flow)]
    events += [Send(round(start + gap * (k + 1), 6),
                    _segment("tcp", client, sport, 80, {"psh", "ack"}, b"flow %d #%d\n" % (flow, k)), flow)
               for k in range(messages)]
    return events


def datagrams(start: float, flow: int, count: int, client: str = "203.0.113.7", gap: float = 0.01) -> list[Send]:
    return [Send(round(start + gap * k, 6), _segment("udp", client, 5000 + flow, 53, payload=b"query %d" % k), flow)
            for k in range(count)]


def trace_of(*groups: list) -> Trace:
    return Trace(tuple(sorted((e for g in groups for e in g), key=lambda e: e.time)))


MIXED = trace_of(connection(0.0, 1), connection(0.002, 2, "198.51.100.2"), datagrams(0.004, 3, 3),
                 connection(0.03, 4, "203.0.113.9", messages=1))


def _monitor(argv) -> tuple[int, set[str]]:
    code, document = run_monitor(*argv[1:])  # argv: the artifacts' `monitor ...` command
    return code, {d["code"] for d in document["diagnostics"] if d["severity"] == "error"}


# ------------------------------------------------------------------ passing --

def test_a_correct_dnat_passes_a_fixed_trace_and_a_short_search(lab, tmp_path):
    harness = Harness(_spec(tmp_path, lab), search=SearchSettings(examples=3, seed=SEED), artifacts=tmp_path / "a")
    driver = Network(lab, dnat(lab))
    judgement = harness.verify(driver, MIXED)
    summary = judgement.report.summary
    assert judgement.codes == [] and summary["pairing_rate"] == 1.0
    assert {b["backend"]: b["flows"] for b in summary["backends"]} == {"b1": 3, "b2": 1}  # round robin per rule
    assert all(f["error"] is None and f["answers"] for f in driver.last_flows.values())
    assert lab.balancer is None  # the driver removed what it installed

    search = harness.check(lambda: Network(lab, dnat(lab), max_duration=1.5),
                           traffic=strategies.traffic(harness.spec, faults=False, max_steps=3, max_burst=4))
    assert search.minimal is None and search.runs >= 3



def test_each_trace_meets_the_balancer_with_no_memory_of_the_traces_before(lab, tmp_path):
    """conntrack remembers a UDP flow for half a minute and more: unless its table is emptied, the same flow in
    the next trace goes where it went before, not where the freshly installed balancer's round robin sends it."""
    harness = Harness(_spec(tmp_path, lab), artifacts=tmp_path / "a")
    driver = Network(lab, dnat(lab))

    def backends(trace: Trace) -> dict[str, int]:
        summary = harness.verify(driver, trace).report.summary
        return {b["backend"]: b["flows"] for b in summary["backends"] if b["flows"]}

    assert backends(trace_of(datagrams(0.0, 1, 2), datagrams(0.05, 2, 2))) == {"b1": 1, "b2": 1}
    assert backends(trace_of(datagrams(0.0, 2, 2))) == {"b1": 1}  # the first flow of a fresh round robin

def test_no_connection_of_a_trace_outlives_it_into_the_next(lab, tmp_path):
    """A backend blocked while a connection to it is open keeps that connection (what the client sent after
    is lost to the block), and resends its end of it once let through again -- into the next trace, past a
    load balancer whose connection table has been emptied: untranslated, an LB207 of the lab's making."""
    harness = Harness(_spec(tmp_path, lab), artifacts=tmp_path / "a")
    driver = Network(lab, dnat(lab), faults="block")
    # the block after the handshake and before the bytes -- a fault takes effect a few milliseconds after its
    # time in the trace (nft runs in the backend's namespace as the replay goes on), so the bytes come later
    harness.run(driver, trace_of(connection(0.0, 1, gap=0.1), [Fault(0.002, "b1", False, "web")]))

    def kept() -> list[str]:
        return [line for name in ("b1", "b2") for line in lab.backends[name].namespace.run(
            "ss", "-t", "-n", "-H", "state", "all", "exclude", "listening", "exclude", "time-wait").splitlines()
            if "198.51.100.1" in line]

    assert kept(), "the block left no connection behind: nothing to test"
    assert harness.run(driver, trace_of(datagrams(0.0, 2, 1))).codes == []
    left = kept()
    if left:  # the driver did not abort it: because it could not (a kernel without CONFIG_INET_DIAG_DESTROY)?
        lab.backends["b1"].namespace.run("ss", "-K", "-t", "-n", "state", "established")
        if kept():
            pytest.skip("this kernel cannot destroy sockets (ss -K): the driver cannot abort old connections")
    assert left == []


@pytest.mark.parametrize("losses, plays", [([3, 0], 2), ([3, 1, 2], 3)], ids=["replayed", "given-up"])
def test_a_trace_whose_capture_lost_packets_is_played_again(lab, tmp_path, monkeypatch, losses, plays):
    """A packet the capture lost looks exactly like one the LB dropped: such a play is not judged."""
    from lbspec.lab import capture

    counted = []
    told = capture._dropped

    def dropped(said: str) -> int:  # what tcpdump said, and the losses of the test on the client side
        counted.append(told(said))
        play, side = divmod(len(counted) - 1, 2)
        return losses[play] if side == 0 else 0

    monkeypatch.setattr(capture, "_dropped", dropped)
    driver = Network(lab, dnat(lab))
    trace = trace_of(connection(0.0, 1))
    if all(losses):
        with pytest.raises(CaptureLoss, match="3 plays"):
            Harness(_spec(tmp_path, lab)).run(driver, trace)
    else:
        assert Harness(_spec(tmp_path, lab)).run(driver, trace).codes == []
    assert len(counted) == 2 * plays and set(counted) == {0}  # both sides each play; tcpdump said it lost none


def test_haproxy_in_proxy_mode_passes_with_a_backend_killed(lab_factory, tmp_path):
    reason = Haproxy.unavailable()
    if reason:
        pytest.skip(reason)
    lab = lab_factory(backends=("b1", "b2", "b3"))
    spec = tmp_path / "lab.lbspec"
    spec.write_text(PROXY_SPEC)
    trace = trace_of(connection(0.0, 1), connection(0.01, 2), [Fault(0.05, "app1", False, "lab")],
                     *(connection(3.2 + 0.01 * k, 3 + k) for k in range(4)))
    driver = Network(lab, Haproxy(HAPROXY), faults="kill")
    judgement = Harness(str(spec), artifacts=tmp_path / "a").verify(driver, trace)
    assert judgement.codes == []
    shares = {b["backend"]: b["flows"] for b in judgement.report.summary["backends"]}
    assert shares["app1"] == 1 and shares["app2"] + shares["app3"] == 5  # after detection, not to app1
    assert [(f.backend, f.up) for f in judgement.recording.faults] == [("app1", False)]
    assert set(lab.servers) == {"b1", "b2", "b3"}  # the killed backend was restarted


# ------------------------------------------------------------------ failing --

def _fails(harness: Harness, driver: Network, trace: Trace) -> Failure:
    with pytest.raises(Failure) as raised:
        harness.verify(driver, trace)
    return raised.value


def test_a_backend_not_in_the_spec_is_LB203_and_the_captures_reproduce_it(lab, tmp_path):
    harness = Harness(_spec(tmp_path, lab), artifacts=tmp_path / "a")
    trace = trace_of(*(connection(0.01 * k, k + 1, f"198.51.100.{k + 1}", messages=1) for k in range(3)))
    failure = _fails(harness, Network(lab, dnat(lab, ("b1", "b2", "b4"))), trace)
    assert failure.codes == ["LB203"] and failure.reproduced
    assert _monitor(failure.artifacts.argv) == (1, {"LB203"})


def test_random_drops_are_LB200(lab, tmp_path):
    harness = Harness(_spec(tmp_path, lab), artifacts=tmp_path / "a")
    trace = trace_of(datagrams(0.0, 1, 12), datagrams(0.005, 2, 12, "203.0.113.8"))
    failure = _fails(harness, Network(lab, dnat(lab, drop_percent=50), settle=0.2), trace)
    assert failure.codes == ["LB200"] and failure.reproduced
    assert _monitor(failure.artifacts.argv) == (1, {"LB200"})


@pytest.mark.parametrize("faults", ["kill", "block"])
def test_a_failed_backend_still_in_the_map_is_LB202_after_detection(lab, tmp_path, faults):
    harness = Harness(_spec(tmp_path, lab), artifacts=tmp_path / "a")
    trace = trace_of([Fault(0.01, "b1", False, "web")], *(connection(2.7 + 0.01 * k, k + 1, messages=1)
                                                          for k in range(4)))
    failure = _fails(harness, Network(lab, dnat(lab), faults=faults, settle=0.2), trace)
    assert failure.codes == ["LB202"] and failure.reproduced
    assert {v.data["backend"] for v in failure.judgement.verdicts} == {"b1"}
    assert [(f.backend, f.up) for f in failure.judgement.recording.faults] == [("b1", False)]
    assert set(lab.servers) == {"b1", "b2", "b3", "b4"} and lab.balancer is None  # all undone


# ------------------------------------------------------------------ refusals --

def test_a_spec_that_does_not_describe_the_lab_is_refused(lab, tmp_path):
    other_backend = Harness(lbspec.loads(DRIVER_SPEC.format(vip=VIP, backends="backend b1 10.1.0.11:8080")))
    with pytest.raises(LabMismatch):
        other_backend.run(Network(lab), MIXED)
    other_vip = Harness(lbspec.loads(DRIVER_SPEC.format(vip="192.0.2.99", backends="backend b1 10.0.2.11:8080")))
    with pytest.raises(LabMismatch):
        other_vip.run(Network(lab), MIXED)
    ours = Harness(_spec(tmp_path, lab))
    with pytest.raises(LabMismatch):
        ours.run(Network(lab), trace_of(connection(0.0, 1, client="10.0.2.77")))
    with pytest.raises(TraceTooLong):
        ours.run(Network(lab, max_duration=1.0), trace_of(connection(0.0, 1), connection(1.5, 2)))
    with pytest.raises(ValueError):
        Network(lab, faults="unplug")


def test_without_the_conntrack_tool_the_driver_is_refused(lab, monkeypatch):
    import shutil

    from lbspec.lab.netns import LabError

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "conntrack" else which(name, *a, **k))
    with pytest.raises(LabError, match="conntrack"):
        Network(lab)


# ------------------------------------------------------------------ plugin --

INNER = """
from ipaddress import ip_address

import pytest
from lbspec import strategies
from lbspec.harness import Network, Segment, Send, Trace
from lbspec.lab import VIP, Forward, NftablesDnat
from lbspec.lab.fixtures import lab, lab_factory  # noqa: F401


def dnat(lab, names):
    return NftablesDnat(VIP, [Forward("tcp", 80, [(lab.address(n), 8080) for n in names]),
                              Forward("udp", 53, [(lab.address(n), 5353) for n in names])])


@pytest.mark.lbspec("web.lbspec")
def test_correct(lb_harness, lbspec_spec, lab):
    lb_harness.check(lambda: Network(lab, dnat(lab, ["b1", "b2"]), max_duration=1.5),
                     traffic=strategies.traffic(lbspec_spec, faults=False, max_steps=3, max_burst=4))


@pytest.mark.lbspec("web.lbspec", properties=["declared_only"])
def test_undeclared(lb_harness, lab):
    flows = [Send(0.01 * k, Segment("tcp", ip_address(f"198.51.100.{k}"), ip_address(VIP), 1024, 80,
                                    frozenset({"syn"})), k) for k in (1, 2)]
    lb_harness.verify(Network(lab, dnat(lab, ["b1", "b4"])), Trace(tuple(flows)))
"""


@pytest.fixture
def inner(request):
    """pytester, registered here when no conftest did (it is a plugin that is off by default)."""
    if not request.config.pluginmanager.has_plugin("pytester"):
        request.config.pluginmanager.import_plugin("pytester")
    return request.getfixturevalue("pytester")


def test_the_plugin_drives_a_real_lb_through_lb_harness(inner, lab_factory, tmp_path):
    pytester = inner
    lab = lab_factory(serve=False)  # only to write the spec with the lab's addresses; the inner test builds its own
    pytester.makefile(".lbspec", web=open(_spec(tmp_path, lab)).read())
    pytester.makepyfile(test_real=textwrap.dedent(INNER))
    result = pytester.runpytest("-p", "no:cacheprovider", "--lbspec-examples", "2", "--lbspec-seed", str(SEED))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*LB203*"])
