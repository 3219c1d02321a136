"""The `lbspec` command.

``main(argv, stdout, stderr) -> int`` takes its streams, so tests call it
without a subprocess; :func:`entry` is the command itself.  Exit codes: 0 ok,
1 findings, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import difflib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from lbspec import __version__
from lbspec import diagnostics as d
from lbspec.loader import Loaded, load_path, load_services, load_text, read_source
from lbspec.options import count, positive, replace_file, witness_directory
from lbspec.render import render_json, render_text
from lbspec.render.text import make_console
from lbspec.render.json import summary_counts

__all__ = ["main", "entry", "EXIT_OK", "EXIT_FINDINGS", "EXIT_ERROR"]

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors by raising, and prints where it is told."""

    stdout: TextIO = sys.stdout

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}\n{self.format_usage().rstrip()}")

    def _print_message(self, message: str, file: TextIO | None = None) -> None:
        if message:
            self.stdout.write(message)


class _Streams:
    def __init__(self, stdout: TextIO, stderr: TextIO, color: str = "auto"):
        self.out = stdout
        self.err = stderr
        self.color = color

    def use_color(self, stream: TextIO) -> bool:
        if self.color != "auto":
            return self.color == "always"
        return _terminal(stream) and "NO_COLOR" not in os.environ


def _terminal(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


# lbspec does no linear algebra: numpy's BLAS need not start a thread per core, which would spin for a
# while at import, taking CPU from the monitor's own processes (set before numpy is first imported)
_ONE_BLAS_THREAD = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def entry() -> None:
    """The `lbspec` command (its script and ``python -m lbspec``): :func:`main`, then a quick exit.

    Once main has returned, what is left is the interpreter freeing every object one by one, which the
    system does at once when the process ends -- after monitoring a million packets that took 30-40ms,
    a fifth of lbspec's start-up.  So the process ends as soon as every exit handler (registered after this
    one, so run before it) has run and the output is flushed.  If main raised, Python exits as usual.
    """
    ending: list[int] = []
    atexit.register(_end, ending)
    ending.append(main())
    sys.exit(ending[0])


def _end(ending: list[int]) -> None:
    if not ending:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: Python's own exit says so
        return
    os._exit(ending[0])


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the command line; returns the exit code."""
    for name in _ONE_BLAS_THREAD:
        os.environ.setdefault(name, "1")
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = _build_parser(stdout)
    try:
        args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    except _UsageError as error:
        stderr.write(f"{error}\n")
        return EXIT_ERROR
    except SystemExit as done:  # --help and --version
        return int(done.code or 0)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_ERROR
    streams = _Streams(stdout, stderr, getattr(args, "color", "auto"))
    try:
        return args.run(args, streams)
    except d.InternalError as error:
        stderr.write(f"lbspec: internal error: {error}\nThis is a bug in lbspec; please report it.\n")
        return EXIT_ERROR
    except d.LbspecError as error:
        stderr.write(f"lbspec: error: {error}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        stderr.write("lbspec: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as error:  # the system's, not lbspec's: output to a full disk, a file that cannot be replaced
        where = f": {error.filename}" if error.filename else ""
        with contextlib.suppress(OSError):
            stderr.write(f"lbspec: error: {error.strerror or error}{where}\n")
        return EXIT_ERROR


# ------------------------------------------------------------------ parser --

def _parse(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    """Like parse_args, but files may also follow options (`check --format json a b`).

    argparse gives a command's list of files only the words before the first
    option; the words left over after the options join that list.
    """
    args, extra = parser.parse_known_args(argv)
    rest = getattr(args, "_rest", None)
    if extra and rest and not any(word.startswith("-") and word != "-" for word in extra):
        getattr(args, rest).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _gather_rest(commands) -> None:
    """Tell each command which of its positionals takes the files (for _parse)."""
    for sub in commands.choices.values():
        rest = [a.dest for a in sub._actions if not a.option_strings and a.nargs in ("*", "+")]
        if rest:
            sub.set_defaults(_rest=rest[-1])


def _build_parser(stdout: TextIO) -> _Parser:
    _Parser.stdout = stdout
    parser = _Parser(prog="lbspec", description="Hold load balancers to a written specification.",
                     epilog="Exit codes: 0 ok, 1 findings, 2 usage or input error.")
    parser.add_argument("--version", action="version", version=f"lbspec {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    check = _command(commands, "check", _run_check, "check specs for errors and gaps",
                     "Read each spec, report every problem in it, and everything it fails to "
                     "guarantee: each library property and assertion is checked with Z3, and every "
                     "counterexample is replayed through the reference evaluator before it is shown.")
    check.add_argument("files", nargs="+", metavar="FILE", help="spec files to check")
    check.add_argument("--format", choices=("text", "json", "sarif", "junit", "github"), default="text",
                       help="output format (default: text)")
    check.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                       help="colour the text output (default: auto, on a terminal only)")
    check.add_argument("--select", type=_code_list, action="append", default=[], metavar="CODES",
                       help="report only these codes or prefixes, comma-separated (e.g. LB100,LB104 or LB1)")
    check.add_argument("--ignore", type=_code_list, action="append", default=[], metavar="CODES",
                       help="do not report these codes or prefixes")
    check.add_argument("--severity", type=_severity, action="append", default=[], metavar="CODE=LEVEL",
                       help="change a code's severity (error, warning or info), e.g. LB105=error")
    check.add_argument("--explain", action="store_true",
                       help="for each property that holds, the spec lines it rests on; for each that "
                            "fails, the clauses that would have to change")
    check.add_argument("--witness-dir", metavar="DIR", help="write each witness as a pcap in DIR")
    check.add_argument("--exit-zero", action="store_true", help="exit 0 even when there are findings")
    check.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                       help="give up on one solver question after this long (default: 10); "
                            "it is then reported as unknown (LB111)")
    check.add_argument("--jobs", type=count, default=0, metavar="N",
                       help="check services in N processes (default: one per CPU)")
    check.add_argument("--rlimit", type=count, default=50_000_000, metavar="UNITS",  # smt.DEFAULT_RLIMIT
                       help="solver resource limit per question: like --timeout, but the same on every "
                            "machine (default: 50000000)")
    check.add_argument("--seed", type=int, default=0, help="solver random seed (default: 0)")
    check.add_argument("--front-end-only", action="store_true",
                       help="only read and resolve the specs (syntax and meaning), without the solver")
    check.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")

    fmt = _command(commands, "fmt", _run_fmt, "rewrite specs in canonical layout",
                   "Rewrite each file in canonical layout, keeping comments. `-` reads standard "
                   "input and writes standard output.")
    fmt.add_argument("files", nargs="+", metavar="FILE", help="spec files, or - for standard input")
    fmt.add_argument("--check", action="store_true",
                     help="change nothing; exit 1 if a file is not canonical (for CI)")
    fmt.add_argument("--diff", action="store_true", help="change nothing; print the changes as a diff")

    props = _command(commands, "properties", _run_properties, "list the property library",
                     "List the implicit properties every spec is held to; with a spec, show "
                     "which properties apply to each of its services.")
    props.add_argument("spec", nargs="?", metavar="SPEC", help="show how this spec applies them")
    props.add_argument("-v", "--verbose", action="store_true", help="show what each property promises")
    _output_options(props)
    for name, module in _SUBCOMMANDS:
        _add_subcommand(commands, name, module)
    _gather_rest(commands)
    return parser


# Commands that live with their subsystem.  Each module exposes SUMMARY,
# DESCRIPTION, configure(parser) and run(args, stdout, stderr, color) -> int,
# and imports its heavy libraries (scapy, crossplane...) only inside run().
_SUBCOMMANDS = (("monitor", "lbspec.runtime.command"), ("import", "lbspec.importers.command"))


def _add_subcommand(commands, name: str, module_name: str) -> None:
    import importlib

    module = importlib.import_module(module_name)

    def run(args: argparse.Namespace, io: _Streams) -> int:
        return module.run(args, io.out, io.err, io.use_color(io.out))

    sub = _command(commands, name, run, module.SUMMARY, module.DESCRIPTION)
    module.configure(sub)


def _command(commands, name: str, run: Callable, summary: str, description: str) -> _Parser:
    sub = commands.add_parser(name, help=summary, description=description,
                              epilog="Exit codes: 0 ok, 1 findings, 2 usage or input error.")
    sub.set_defaults(run=run)
    return sub


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the text output (default: auto, on a terminal only)")


# ------------------------------------------------------------------- check --

def _seconds(text: str) -> float:
    return positive(text, "a number of seconds above zero")


def _known_code(text: str) -> str:
    """A code or prefix that names no code lbspec has would match nothing: `--select` would hide every finding."""
    code = text.strip().upper()
    if not any(known.startswith(code) for known in d.KINDS):
        raise argparse.ArgumentTypeError(f"{text.strip()!r} is not a diagnostic code or a prefix of one "
                                         "(e.g. LB104, LB1)")
    return code


def _code_list(text: str) -> tuple[str, ...]:
    return tuple(_known_code(c) for c in text.split(",") if c.strip())


def _severity(text: str) -> tuple[str, d.Severity]:
    code, _, level = text.partition("=")
    try:
        severity = d.Severity(level.strip().lower())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write CODE=error, CODE=warning or CODE=info") from None
    return _known_code(code), severity


def _codes(values: list[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(code for codes in values for code in codes)


def _filtered(found: list[d.Diagnostic], args: argparse.Namespace) -> list[d.Diagnostic]:
    select, ignore, levels = _codes(args.select), _codes(args.ignore), dict(args.severity)
    out = []
    for diagnostic in found:
        if select and not diagnostic.code.startswith(select):
            continue
        if ignore and diagnostic.code.startswith(ignore):
            continue
        level = next((lvl for code, lvl in levels.items() if diagnostic.code.startswith(code)), None)
        out.append(diagnostic.with_severity(level) if level else diagnostic)
    return out


def _exit_code(diagnostics: list[d.Diagnostic], failed: bool, exit_zero: bool = False) -> int:
    if failed or any(x.code == d.INTERNAL.code for x in diagnostics):
        return EXIT_ERROR
    if exit_zero:
        return EXIT_OK
    serious = [x for x in diagnostics if x.severity is not d.Severity.INFO]
    return EXIT_FINDINGS if serious else EXIT_OK


def _run_check(args: argparse.Namespace, io: _Streams) -> int:
    from lbspec.check import CheckOptions, check_spec

    options = CheckOptions(timeout=args.timeout, seed=args.seed, explain=args.explain, jobs=args.jobs,
                           rlimit=args.rlimit)
    if args.witness_dir:
        witness_directory(args.witness_dir)
    results = []
    for name in args.files:
        loaded = load_services(name)
        found = list(loaded.diagnostics)
        if loaded.ok and not args.front_end_only:
            with _Progress(io, name, len(loaded.spec.services), not args.no_progress) as advance:
                found += check_spec(loaded.spec, options, advance)
        results.append((name, loaded, _filtered(found, args)))
    failed = any(not loaded.ok for _, loaded, _ in results)
    everything = [x for _, _, found in results for x in found]
    _render_check(args, io, results, everything)
    if args.witness_dir and not _write_witnesses(args.witness_dir, results, io):
        return EXIT_ERROR
    return _exit_code(everything, failed, args.exit_zero)


class _Progress:
    """A progress bar on stderr for long checks: on a terminal, coloured or not, unless turned off.  It shows
    at once for a spec of many services, and for fewer once the check has taken :attr:`DELAY` seconds (one
    service of a thousand backends takes several): a check over in a moment shows none."""

    DELAY = 1.0

    def __init__(self, io: _Streams, name: str, total: int, wanted: bool = True):
        self.show = wanted and _terminal(io.err)
        self.io, self.name, self.total = io, name, total
        self.delay = 0.0 if total >= 20 else self.DELAY

    def __enter__(self):
        if not self.show:
            return None
        import threading

        from rich.progress import Progress

        console = make_console(self.io.err, self.io.use_color(self.io.err), terminal=True)
        self.bar = Progress(console=console, transient=True)
        self.task = self.bar.add_task(f"checking {self.name}", total=self.total)
        self.timer = threading.Timer(self.delay, self.bar.start)
        self.timer.daemon = True
        if self.delay:
            self.timer.start()
        else:
            self.bar.start()
        return lambda done, total: self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.show:
            self.timer.cancel()
            if self.timer.is_alive():
                self.timer.join()  # a start under way finishes first
            self.bar.stop()  # (nothing, if it never started)
        return False


def _render_check(args: argparse.Namespace, io: _Streams, results: list, everything: list[d.Diagnostic]) -> None:
    from lbspec.render import render_github, render_junit, render_sarif

    if args.format == "json":
        render_json(everything, io.out, files=[_file_summary(n, r, f) for n, r, f in results])
    elif args.format == "sarif":
        render_sarif(everything, io.out)
    elif args.format == "github":
        render_github(everything, io.out)
    elif args.format == "junit":
        render_junit([case for n, r, f in results for case in _junit_cases(n, r, f)], io.out, "lbspec check")
    else:
        sources = {k: v for _, r, _ in results for k, v in r.sources.items()}
        render_text(everything, sources, io.out, io.use_color(io.out))
        for name, loaded, found in results:
            io.out.write(_summary_line(name, loaded, found) + "\n")


def _junit_cases(name: str, loaded: Loaded, found: list[d.Diagnostic]):
    if not loaded.ok:
        yield (name, "load", found)
        return
    yield (name, "load", [x for x in found if x.code.startswith("LB0")])
    for service in loaded.spec.services:
        mine = [x for x in found if (x.data or {}).get("service") == service.name]
        for check in service.checks:
            yield (f"{name}:{service.name}", check.name, [x for x in mine if x.data.get("property") == check.name])
        yield (f"{name}:{service.name}", "structure", [x for x in mine if "property" not in x.data])


def _write_witnesses(directory: str, results: list, io: _Streams) -> bool:
    """Write a capture per counterexample; False (and why, on stderr) if one could not be written."""
    from lbspec.runtime.check_witness import write_witness

    written = 0
    for name, loaded, found in results:
        for number, diagnostic in enumerate(x for x in found if x.witness is not None):
            service = loaded.spec.service(diagnostic.witness.service)
            path = os.path.join(directory, f"{Path(name).stem}-{service.name}-{diagnostic.code}-{number}.pcap")
            try:
                write_witness(path, service, diagnostic.witness)
            except OSError as error:
                io.err.write(f"lbspec check: error: cannot write {path}: {error.strerror or error} "
                             f"({written} witness capture{'s' if written != 1 else ''} written before it)\n")
                return False
            written += 1
    io.err.write(f"wrote {written} witness capture{'s' if written != 1 else ''} to {directory}\n")
    return True


def _file_summary(name: str, loaded: Loaded, found: list[d.Diagnostic]) -> dict:
    spec = loaded.spec
    return {"file": name, "ok": loaded.ok,
            "services": [s.name for s in spec.services] if spec else [],
            "summary": summary_counts(found)}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary_line(name: str, loaded: Loaded, found: list[d.Diagnostic]) -> str:
    counts = summary_counts(found)
    problems = ", ".join(_plural(counts[k + "s"], k) for k in ("error", "warning") if counts[k + "s"])
    if not loaded.ok:
        return f"{name}: not loaded ({problems or 'its errors are left out by --select, --ignore or --severity'})"
    services = loaded.spec.services
    checks = sum(len(s.checks) for s in services)
    what = f"{_plural(len(services), 'service')}, {_plural(checks, 'property check')}"
    return f"{name}: {what}: " + (problems or "no problems found")


# --------------------------------------------------------------------- fmt --

def _run_fmt(args: argparse.Namespace, io: _Streams) -> int:
    from lbspec.syntax.format import format_tree
    from lbspec.syntax.parser import parse_text

    worst = EXIT_OK
    for name in args.files:
        text, reason = (sys.stdin.read(), None) if name == "-" else read_source(name)
        if text is None:
            io.err.write(f"lbspec fmt: cannot read {name}: {reason}\n")
            worst = EXIT_ERROR
            continue
        tree, errors = parse_text(text, name)
        if tree is None:
            render_text(errors, {name: text}, io.err, io.use_color(io.err))
            worst = EXIT_ERROR
            continue
        formatted = format_tree(tree, text)
        _same_meaning(tree, formatted, name)
        worst = max(worst, _fmt_output(name, text, formatted, args, io))
    return worst


def _same_meaning(tree, formatted: str, name: str) -> None:
    """Refuse to write a layout that parses to anything but the same tree."""
    from lbspec.syntax.parser import parse_text

    again, errors = parse_text(formatted, name)
    if again is None or again.items != tree.items or again.comments != tree.comments:
        raise d.InternalError(f"formatting {name} would change its meaning; the file was left alone")


def _fmt_output(name: str, text: str, formatted: str, args: argparse.Namespace, io: _Streams) -> int:
    if name == "-" and not (args.check or args.diff):
        io.out.write(formatted)
        return EXIT_OK
    if formatted == text:
        return EXIT_OK
    if args.diff:
        io.out.writelines(difflib.unified_diff(text.splitlines(True), formatted.splitlines(True),
                                               f"{name} (original)", f"{name} (formatted)"))
    if args.check or args.diff:
        if args.check:
            io.err.write(f"{name}: not formatted\n")
        return EXIT_FINDINGS
    try:
        replace_file(name, formatted)
    except OSError as error:
        io.err.write(f"lbspec fmt: error: cannot write {name}: {error.strerror or error} (it is unchanged)\n")
        return EXIT_ERROR
    io.err.write(f"formatted {name}\n")
    return EXIT_OK


# -------------------------------------------------------------- properties --

def _run_properties(args: argparse.Namespace, io: _Streams) -> int:
    if args.spec is not None:
        return _run_applied_properties(args, io)
    library = [p for p in load_text("", "<empty>").spec.properties if p.library]
    if args.format == "json":
        json.dump({"lbspec": 1, "properties": [
            {"name": p.name, "title": p.title, "definition": p.definition, "doc": p.doc,
             "file": p.span.file} for p in library]}, io.out, indent=2)
        io.out.write("\n")
        return EXIT_OK
    from lbspec.render.properties import render_library

    render_library(library, io.out, io.use_color(io.out), args.verbose)
    return EXIT_OK


def _run_applied_properties(args: argparse.Namespace, io: _Streams) -> int:
    loaded = load_path(args.spec)
    if not loaded.ok:
        render_text(loaded.diagnostics, loaded.sources, io.err, io.use_color(io.err))
        return EXIT_ERROR
    services = loaded.spec.services
    if args.format == "json":
        json.dump({"lbspec": 1, "services": [
            {"service": s.name, "checks": [
                {"name": c.name, "title": c.title, "origin": c.origin,
                 "waivers": [{"reason": w.reason, "scoped": w.scope is not None} for w in c.waivers]}
                for c in s.checks],
             "waived": sorted({w.property for w in s.waivers if w.scope is None})}
            for s in services]}, io.out, indent=2)
        io.out.write("\n")
        return EXIT_OK
    from lbspec.render.properties import render_applied

    render_applied(services, io.out, io.use_color(io.out))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
