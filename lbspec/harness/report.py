"""The message of a failed test: verdict, property, spec line, minimal trace, captures and replay.

Laid out for a terminal and for trace.txt::

    lbspec: the load balancer broke `flow_affinity` in service pylb (LB201 affinity-break)

    error[LB201]: moved from web1 to web2 ...
      --> <library>/flow_affinity.lbspec:4:1
       |
     4 | property flow_affinity "a connection stays on one backend" {
    ...
    minimal trace (3 events: 2 packets in 1 flow, 1 fault, over 2.502s; shrunk from 17 events):
      t=0.000s  flow 1  TCP 198.51.100.1:1024 -> 192.0.2.80:80 [SYN]
      ...
    captures: .../client.pcap, .../backend.pcap, events: .../events.jsonl
    reproduce: lbspec monitor ... (checked: it reports LB201)
    search: seed 1234, 31 traces (--lbspec-seed 1234 repeats it)
"""

from __future__ import annotations

from lbspec.diagnostics import Diagnostic
from lbspec.harness.artifacts import Artifacts
from lbspec.harness.judge import Judgement
from lbspec.harness.trace import Trace
from lbspec.semantics.model import Spec

__all__ = ["failure_message", "headline"]


def headline(verdict: Diagnostic) -> str:
    facts = verdict.data or {}
    where = f" in service {facts['service']}" if facts.get("service") else ""
    return f"lbspec: the load balancer broke `{facts.get('property', '?')}`{where} ({verdict.code} {verdict.name})"


def _rendered(verdict: Diagnostic, spec: Spec) -> str:
    from lbspec.render.text import format_diagnostic

    return format_diagnostic(verdict, spec.sources).plain.rstrip()


def _others(judgement: Judgement) -> list[str]:
    rest = judgement.verdicts[1:]
    return [f"  {v.code} {v.name} ({(v.data or {}).get('property', '?')}): {v.message}" for v in rest]


def _trace(trace: Trace, search) -> list[str]:
    shrunk = ""
    if search is not None and search.first_size is not None and search.first_size != len(trace):
        middle = f", then {search.shrunk_size} by hypothesis" if search.shrunk_size not in (None, len(trace)) else ""
        shrunk = f"; shrunk from {search.first_size} events{middle}"
    lines = [f"minimal trace ({trace.summary()}{shrunk}):" if search else f"trace ({trace.summary()}):"]
    return lines + [f"  {line}" for line in str(trace).splitlines()]


def _replay(artifacts: Artifacts, replayed: tuple[int, list[str], str], judgement: Judgement) -> list[str]:
    code, found, errors = replayed
    wanted = sorted({v.code for v in judgement.report.violations})
    files = f"captures: {artifacts.client}, {artifacts.backend}"
    if artifacts.events is not None:
        files += f", events: {artifacts.events}"
    if code == 1 and sorted(set(found)) == wanted:
        check = f"checked: it reports {', '.join(wanted)}"
    else:
        check = (f"WARNING: replaying it gave exit code {code} and {', '.join(sorted(set(found))) or 'no verdict'}, "
                 f"not {', '.join(wanted)}" + (f": {errors.strip()}" if errors.strip() else ""))
    return [files, f"reproduce: {artifacts.command}", f"  ({check})"]


def _search(search) -> list[str]:
    if search is None:
        return []
    found = f", first failure at trace {search.first_failure}" if search.first_failure else ""
    if search.shrink_stopped:
        found += f", shrinking stopped after its budget of {search.shrink_budget} traces"
    return [f"search: seed {search.seed}, {search.runs} traces{found} (--lbspec-seed {search.seed} repeats it)"]


def failure_message(spec: Spec, trace: Trace, judgement: Judgement, artifacts: Artifacts,
                    replayed: tuple[int, list[str], str], search) -> str:
    verdict = judgement.first
    parts = [headline(verdict), "", _rendered(verdict, spec), ""]
    others = _others(judgement)
    if others:
        parts += ["other verdicts on this trace:", *others, ""]
    parts += [*_trace(trace, search), "", *_replay(artifacts, replayed, judgement), *_search(search)]
    return "\n".join(parts)
