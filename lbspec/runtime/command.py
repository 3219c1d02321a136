"""`lbspec monitor`: judge captured or live traffic around a load balancer against a spec.

This module is imported by every ``lbspec`` invocation, so it imports neither
numpy nor scapy at the top: the runtime is loaded inside :func:`run`.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from lbspec.options import count, finite, positive, witness_directory

__all__ = ["SUMMARY", "DESCRIPTION", "configure", "run"]

SUMMARY = "judge captured or live traffic against a spec"
DESCRIPTION = (
    "Read captures taken around a load balancer (pcap or pcapng, gzip'd or not) or sniff live interfaces, "
    "pair every client packet with what the load balancer sent to a backend, and report every violation of "
    "the spec's properties with the packets that show it. Give one capture of both sides as CAPTURE, or "
    "separate --client-side and --backend-side captures (merged by time, their clock offset estimated).")

EXIT_OK, EXIT_VIOLATIONS, EXIT_ERROR = 0, 1, 2
HEALTH_SHOWN = 20  # health changes the text summary lists


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="the spec file")
    parser.add_argument("captures", nargs="*", metavar="CAPTURE",
                        help="captures holding both sides of the load balancer (roles from the spec's addresses)")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--client-side", action="append", default=[], metavar="FILE",
                        help="a capture of the client side only (repeatable)")
    inputs.add_argument("--backend-side", action="append", default=[], metavar="FILE",
                        help="a capture of the backend side only (repeatable)")
    inputs.add_argument("--live", action="append", default=[], metavar="[client:|backend:]IFACE",
                        help="sniff an interface (repeatable); prefix the side it faces, or leave it to the addresses")
    inputs.add_argument("--duration", type=_duration, metavar="SECONDS",
                        help="with --live: stop after this long (default: until Ctrl-C)")
    inputs.add_argument("--events", metavar="FILE",
                        help='backend health changes, JSON lines: {"time": T, "backend": "app1", "state": "down"}')
    inputs.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="judge only this service (repeatable; default: all)")
    judging = parser.add_argument_group("judging")
    judging.add_argument("--skew", type=_skew, default="auto", metavar="auto|SECONDS",
                         help="clock offset of the backend-side captures (default: estimated)")
    judging.add_argument("--tolerance", type=_milliseconds, default=2.0, metavar="MS",
                         help="clock disagreement allowed between the sides after correction (default: 2)")
    judging.add_argument("--max-flows", type=count, default=1_000_000, metavar="N",
                         help="flows kept per table before the oldest are evicted (default: 1000000)")
    judging.add_argument("--max-verdicts", type=count, default=1000, metavar="N",
                         help="verdicts listed per property and code; the rest are counted (default: 1000)")
    judging.add_argument("--jobs", type=count, default=1, metavar="N",
                         help="above 1: read up to N capture files in processes of their own, one per file; "
                              "judging stays in one process, so the output is the same for every N (default: 1)")
    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=("text", "json", "jsonl", "junit"), default="text",
                        help="text, one JSON document, JSON lines streamed as verdicts are found, or JUnit XML")
    output.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the text output (default: auto, on a terminal only)")
    output.add_argument("--witness-dir", metavar="DIR", help="write a small pcap per violation here")
    output.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")


def _duration(text: str) -> float:
    return positive(text, "a positive, finite number of seconds (leave --duration out to run until Ctrl-C)")


def _milliseconds(text: str) -> float:
    value = finite(text, "a finite number of milliseconds")
    if value < 0:
        raise argparse.ArgumentTypeError("the tolerance cannot be negative")
    return value


def _skew(text: str) -> str | float:
    return text if text == "auto" else finite(text, "`auto` or a finite number of seconds")


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, color: bool) -> int:
    """Run the monitor; returns 0 (no violation), 1 (violations) or 2 (usage or input error)."""
    from lbspec.diagnostics import InputError
    from lbspec.runtime.capture import CaptureError

    try:
        return _run(args, stdout, stderr, color)
    except CaptureError as error:
        return _bad_capture(error, args, stdout, stderr, color)
    except InputError as error:
        stderr.write(f"lbspec monitor: error: {error}\n")
        return EXIT_ERROR


def _run(args, stdout: TextIO, stderr: TextIO, color: bool) -> int:
    from lbspec.diagnostics import WITNESS_UNWRITTEN
    from lbspec.loader import load_services
    from lbspec.render import render_text

    loaded = load_services(args.spec)
    if not loaded.ok:
        render_text(loaded.diagnostics, loaded.sources, stderr, color)
        stderr.write(f"lbspec monitor: {args.spec} is not a valid spec\n")
        return EXIT_ERROR
    _validate(args, loaded.spec)
    from lbspec.runtime import session

    outcome = session.run(args, loaded.spec, stdout, stderr)
    _render(args, outcome, loaded.sources, stdout, color)
    unwritten = [x for x in outcome.report.diagnostics if x.code == WITNESS_UNWRITTEN.code]
    if unwritten:  # the report is whole, but not every file asked for was written
        stderr.write(f"lbspec monitor: error: {unwritten[0].message}\n")
        return EXIT_ERROR
    return EXIT_VIOLATIONS if outcome.report.violations else EXIT_OK


def _validate(args, spec) -> None:
    from lbspec.diagnostics import InputError, did_you_mean

    if not (args.captures or args.client_side or args.backend_side or args.live):
        raise InputError("nothing to read: give CAPTURE files, --client-side/--backend-side files, or --live IFACE")
    if args.live and (args.captures or args.client_side or args.backend_side):
        raise InputError("--live cannot be combined with capture files")
    if args.duration is not None and not args.live:
        raise InputError("--duration only applies to --live")
    _both_sides(args)
    names = [s.name for s in spec.services]
    for name in args.service:
        if name not in names:
            hint = did_you_mean(name, names)
            raise InputError(f"no service named {name!r} in {args.spec}" + (f"; {hint}" if hint else ""))
    if args.witness_dir:
        witness_directory(args.witness_dir)


def _both_sides(args) -> None:
    """Captures of one side only: every packet would look dropped (or made up), so it is a usage error."""
    from lbspec.diagnostics import InputError

    if args.live:
        from lbspec.runtime.live import parse_interface

        sides = {parse_interface(text).side for text in args.live}
        given = {"client": "client" in sides, "backend": "backend" in sides, "both": None in sides}
        option = "--live {side}:IFACE"
    else:
        given = {"client": bool(args.client_side), "backend": bool(args.backend_side), "both": bool(args.captures)}
        option = "--{side}-side"
    if given["both"] or given["client"] == given["backend"]:
        return
    have, missing = ("client", "backend") if given["client"] else ("backend", "client")
    raise InputError(f"{option.format(side=have)} needs {option.format(side=missing)} too: with one side only, "
                     f"every packet would look {'dropped' if have == 'client' else 'made up'}, since the monitor holds "
                     "what the LB received against what it sent on (a capture of both sides is given without a "
                     f"side: {'--live IFACE' if args.live else 'CAPTURE'})")


# ------------------------------------------------------------------ output --

def _render(args, outcome, sources: dict[str, str], stdout: TextIO, color: bool) -> None:
    report = outcome.report
    if args.format == "jsonl":
        from lbspec.render.json import write_line

        write_line({"summary": report.summary}, stdout)
        return
    if args.format == "json":
        from lbspec.render import render_json

        render_json(report.diagnostics, stdout, monitor=report.summary)
        return
    if args.format == "junit":
        _junit(outcome, stdout)
        return
    from lbspec.render import render_text

    shown = [x for x in report.diagnostics if not (outcome.streamed and x.data and "property" in x.data)]
    render_text(shown, sources, stdout, color)
    stdout.write(summary_text(report.summary))


def _junit(outcome, stdout: TextIO) -> None:
    from lbspec.render.junit import render_junit

    cases = []
    for service in outcome.spec.services:
        if outcome.services and service.name not in outcome.services:
            continue
        for check in service.checks:
            found = [x for x in outcome.report.diagnostics
                     if x.data and x.data.get("service") == service.name and x.data.get("property") == check.name]
            cases.append((f"lbspec.monitor.{service.name}", check.name, found))
    rest = [x for x in outcome.report.diagnostics if not (x.data and "property" in x.data)]
    cases.append(("lbspec.monitor", "captures", rest))
    render_junit(cases, stdout, suite="lbspec monitor")


def summary_text(summary: dict) -> str:
    """The summary as a few lines for people."""
    from lbspec.runtime.verdicts import timestamp

    lines = [_reading(summary)]
    for source in summary["sources"]:
        lines.append(f"  {source['file']} ({source['side']} side): {source['packets']:,} packets")
    if summary["listened_ingress"] or "proxy" not in summary:  # proxies pair connections: their line says so
        lines.append(_pairing(summary))
    backends = [b for b in summary["backends"] if b["flows"] or b["expected"]]
    if backends:
        lines.append("backends (flows, share of flows / of weights / of bytes):")
        width = max(len(f"{b['service']}/{b['pool']}/{b['backend']}") for b in backends)
        for b in backends:
            name = f"{b['service']}/{b['pool']}/{b['backend']}".ljust(width)
            lines.append(f"  {name}  {b['flows']:>9,}  {_pct(b['share'])} / {_pct(b['expected'])} / "
                         f"{_pct(b['bytes_share'])}")
    for event in summary["health"][:HEALTH_SHOWN]:
        lines.append(f"health: {event['backend']} {event['state']} at {timestamp(event['time'])} "
                     f"({event['evidence']})")
    if len(summary["health"]) > HEALTH_SHOWN:
        lines.append(f"health: {len(summary['health']) - HEALTH_SHOWN:,} more changes (--format json lists them all)")
    if "proxy" in summary:
        lines.append(_proxy(summary["proxy"]))
    lines.append(_verdicts(summary))
    return "\n".join(lines) + "\n"


def _reading(summary: dict) -> str:
    extra = [f"{summary[k]:,} {k.replace('_', ' ')}" for k in ("undecodable", "fragments", "capture_drops")
             if summary.get(k)]
    return (f"monitor: {summary['packets']:,} packets" + (f" ({', '.join(extra)})" if extra else "")
            + f", {summary['flows']:,} flows, {summary['duration_s']:.3f}s of traffic")


def _proxy(proxy: dict) -> str:
    moved = proxy["bytes"]
    text = (f"proxy: {proxy['client_connections']:,} client connections, {proxy['carried']:,} carried to a backend; "
            f"bytes client->LB {moved['client_to_lb']:,}, "
            f"LB->backend {moved['lb_to_backend']:,}, backend->LB {moved['backend_to_lb']:,}, "
            f"LB->client {moved['lb_to_client']:,}")
    framed = proxy["proxy_protocol"]
    if any(framed.values()):
        text += (f"; PROXY protocol headers from clients {framed['from_clients']:,}, "
                 f"to backends {framed['to_backends']:,}")
    if proxy.get("cut"):
        text += f"; {proxy['cut']:,} with bytes the capture cut short (not judged)"
    if proxy.get("sent_after_close"):
        text += f"; {proxy['sent_after_close']:,} sent bytes after the LB closed them when over (not judged)"
    failed = {**{k: n for k, n in proxy["failed"].items() if n},
              **{f"attempt {k}": n for k, n in proxy["failed_attempts"].items() if n}}
    return text + (f"; failed: {', '.join(f'{k} {n:,}' for k, n in failed.items())}" if failed else "")


def _pairing(summary: dict) -> str:
    rate = summary["pairing_rate"]
    latency = summary["latency_ms"]
    text = (f"pairing: {summary['paired']:,} of {summary['listened_ingress']:,} listened packets forwarded"
            + (f" ({rate:.3%})" if rate is not None else ""))
    if latency["p50"] is not None:
        text += f"; LB latency p50 {latency['p50']:.3f}ms, p99 {latency['p99']:.3f}ms"
    if summary.get("replies_relayed") is not None:
        text += f"; {summary['replies_relayed']:,} backend replies relayed back"
    return text


def _verdicts(summary: dict) -> str:
    from lbspec.diagnostics import KINDS

    counts = summary["verdicts"]
    if not counts:
        return "verdicts: no violations"
    text = ", ".join(f"{code} {KINDS[code].name} {n:,}" for code, n in counts.items())
    if summary["verdicts_unlisted"]:
        text += f" ({summary['verdicts_unlisted']:,} not listed: see --max-verdicts)"
    return "verdicts: " + text


def _pct(value) -> str:
    return "     -" if value is None else f"{value:6.1%}"


def _bad_capture(error, args, stdout: TextIO, stderr: TextIO, color: bool) -> int:
    from lbspec.diagnostics import BAD_CAPTURE
    from lbspec.render import render_json, render_text

    diagnostic = BAD_CAPTURE.at(None, what=str(error), data={"file": error.path, "reason": error.reason})
    form = getattr(args, "format", "text")
    if form == "jsonl":  # one line, like every verdict streamed before it
        from lbspec.render.json import write_line

        write_line(diagnostic, stdout)
    elif form == "json":
        render_json([diagnostic], stdout)
    else:
        render_text([diagnostic], {}, stderr, color)
    return EXIT_ERROR

