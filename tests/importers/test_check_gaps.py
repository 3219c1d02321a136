"""Imported specs, then `lbspec check`: the gaps of the real configuration show up as findings."""

from __future__ import annotations

import pytest

from importing import CONFIGS, cli


def _checker_reports_findings() -> bool:
    """Whether `lbspec check` reports LB1xx findings yet (examples/api.lbspec has several)."""
    done = cli("check", str(CONFIGS.parents[2] / "examples" / "api.lbspec"))
    return "[LB1" in done.out


@pytest.fixture
def checked(tmp_path):
    if not _checker_reports_findings():
        pytest.skip("`lbspec check` reports no LB1xx findings yet")

    def check(kind: str, name: str) -> str:
        target = tmp_path / "imported.lbspec"
        assert cli("import", kind, str(CONFIGS / kind / name), "-o", str(target), "-q").code in (0, 1)
        done = cli("check", str(target))
        assert done.code in (0, 1), done.out
        return done.out
    return check


def test_haproxy_without_checks_has_an_unbounded_detection_window(checked):
    assert "[LB105]" in checked("haproxy", "lab-tcp-nocheck.cfg")


def test_nginx_passive_checks_are_reported_like_no_checks(checked):
    assert "[LB105]" in checked("nginx", "lab-stream.conf")


def test_roundrobin_proxy_is_not_per_packet_balancing(checked):
    assert "[LB104]" not in checked("haproxy", "lab-tcp-nocheck.cfg")


def test_a_service_without_endpoints_is_checked(checked):
    # kube-dns.yaml's Service reports has no EndpointSlice: it imports as a service of `otherwise reject` alone
    assert "[LB100]" in checked("k8s", "kube-dns.yaml")  # kube-dns's, with `health none`
