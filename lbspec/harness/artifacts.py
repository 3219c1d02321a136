"""Writing a failing trace down so that anyone can replay it.

For a recording the harness writes, into one directory:

* ``client.pcap`` and ``backend.pcap`` -- what crossed each side of the LB
  (raw IP link type, microsecond timestamps; tshark and ``lbspec monitor``
  read them);
* ``events.jsonl`` -- the injected faults, in the format of ``lbspec monitor
  --events`` (only when there were faults);
* ``trace.txt`` -- the trace, the verdicts and the command;
* ``verdict.json`` -- the same for programs: codes, trace size, the command
  and what replaying it reported;

and the ``lbspec monitor`` command that judges those files.  :func:`replay`
runs that command in process and returns the codes it reports, so the harness
can check that the files really reproduce the verdict.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lbspec.harness.adapter import Observed, Recording
from lbspec.harness.judge import split_time, stamp

__all__ = ["Artifacts", "write_recording", "write_pcap", "write_summary", "replay", "LINKTYPE_RAW"]

LINKTYPE_RAW = 101
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)


@dataclass(frozen=True)
class Artifacts:
    """The files of one recording and the command that judges them."""

    directory: Path
    client: Path
    backend: Path
    events: Path | None
    argv: tuple[str, ...]  # the arguments of `lbspec monitor ...` (without the program name)

    @property
    def command(self) -> str:
        return shlex.join(("lbspec", *self.argv))


def write_pcap(path: str | os.PathLike, packets: Iterable[Observed], epoch: int) -> Path:
    """Write IP packets as a classic pcap (raw IP, microseconds), in time order."""
    path = Path(path)
    with open(path, "wb") as stream:
        stream.write(_PCAP_HEADER)
        for packet in sorted(packets, key=lambda p: p.time):
            seconds, micros = split_time(epoch, packet.time)
            stream.write(struct.pack("<IIII", seconds, micros, len(packet.data), len(packet.data)))
            stream.write(packet.data)
    return path


def _write_events(path: Path, recording: Recording) -> Path:
    with open(path, "w", encoding="utf-8") as stream:
        for fault in recording.faults:
            item = {"time": stamp(recording.epoch, fault.time), "backend": fault.backend,
                    "state": "up" if fault.up else "down"}
            if fault.service:
                item["service"] = fault.service
            stream.write(json.dumps(item) + "\n")
    return path


def write_recording(directory: str | os.PathLike, spec_path: str | os.PathLike, recording: Recording,
                    services: Iterable[str] = ()) -> Artifacts:
    """Write the captures (and events) of ``recording`` into ``directory``; return them with the command."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    client = write_pcap(directory / "client.pcap", recording.on("client"), recording.epoch)
    backend = write_pcap(directory / "backend.pcap", recording.on("backend"), recording.epoch)
    events = _write_events(directory / "events.jsonl", recording) if recording.faults else None
    argv = ["monitor", str(Path(spec_path).resolve()), "--client-side", str(client.resolve()),
            "--backend-side", str(backend.resolve()), "--skew", "0"]
    if events is not None:
        argv += ["--events", str(events.resolve())]
    for name in services:
        argv += ["--service", name]
    return Artifacts(directory, client, backend, events, tuple(argv))


def replay(artifacts: Artifacts) -> tuple[int, list[str], str]:
    """Run the artifacts' command in process: its exit code, the codes it reports, and its error output."""
    from lbspec.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code = main([*artifacts.argv, "--format", "json", "--color", "never"], stdout, stderr)
    try:
        document = json.loads(stdout.getvalue())
    except json.JSONDecodeError:
        return code, [], stderr.getvalue() or stdout.getvalue()
    found = [d["code"] for d in document.get("diagnostics", []) if d.get("severity") == "error"]
    return code, found, stderr.getvalue()


def write_summary(path: Path, trace, judgement, artifacts: Artifacts, replayed: tuple[int, list[str], str],
                  search) -> Path:
    """verdict.json: what failed, on how small a trace, and whether the captures reproduce it."""
    first = judgement.first
    document = {
        "code": first.code, "property": (first.data or {}).get("property"),
        "service": (first.data or {}).get("service"), "message": first.message,
        "codes": judgement.codes,
        "trace": {"events": len(trace), "packets": len(trace.sends), "flows": trace.flows,
                  "faults": len(trace.faults), "lines": str(trace).splitlines()},
        "search": None if search is None else {"seed": search.seed, "runs": search.runs,
                                               "first_failure": search.first_failure,
                                               "first_size": search.first_size, "shrunk_size": search.shrunk_size,
                                               "shrink_budget": search.shrink_budget,
                                               "shrink_stopped": search.shrink_stopped},
        "captures": {"client": str(artifacts.client), "backend": str(artifacts.backend),
                     "events": str(artifacts.events) if artifacts.events else None},
        "command": artifacts.command, "argv": list(artifacts.argv),
        "replay": {"exit_code": replayed[0], "codes": sorted(set(replayed[1]))},
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
