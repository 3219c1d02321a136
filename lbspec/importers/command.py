"""`lbspec import KIND FILE...`: print the spec a load balancer configuration amounts to.

Every `lbspec` invocation imports this module to build its command line, so it
imports nothing heavy: the importers (and crossplane, PyYAML) load inside run().
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from typing import TextIO

from lbspec.options import replace_file

__all__ = ["SUMMARY", "DESCRIPTION", "configure", "run"]

SUMMARY = "turn a load balancer configuration into a spec"
DESCRIPTION = (
    "Read a HAProxy or nginx configuration, an nftables ruleset (`nft -j list ruleset`, "
    "kube-proxy's nftables mode included) or Kubernetes Services with their EndpointSlices, "
    "and print the spec they amount to, in canonical layout. Every setting the spec language "
    "cannot express gets a comment starting `not represented:` where it belongs, and a warning "
    "(LB301). Exit 0: everything was represented; 1: the spec was written but some settings "
    "were not represented; 2: a file could not be read or parsed (LB300), or a bad option."
)

_KINDS = ("haproxy", "nginx", "nftables", "k8s")
EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


def _address(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=_KINDS, help="what the files are")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="configuration files (HAProxy reads several in order; k8s takes several YAML files)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the spec to FILE (replaced in one step) instead of standard output")
    parser.add_argument("--service-name", metavar="NAME",
                        help="name the service (when the configuration gives exactly one)")
    parser.add_argument("--vip", action="append", type=_address, default=[], metavar="ADDRESS",
                        help="the address clients use, for listeners bound to every address "
                             "(`bind *:80`, `listen 80`, a DNAT rule without a destination, Kubernetes "
                             "node ports); repeat for several")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="how to print warnings and errors on standard error (default: text)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="do not print LB301 warnings (the comments in the spec remain)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the warnings (default: auto, on a terminal only)")


def run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, color: bool) -> int:
    from lbspec import diagnostics as d
    from lbspec.importers import ConfigError, Options, import_config

    use_color = _stderr_color(args.color, stderr)
    options = Options(vips=tuple(args.vip), service_name=args.service_name)
    try:
        imported = import_config(args.kind, args.files, options, filename=args.output or "imported.lbspec")
    except ConfigError as error:
        _report(list(error.diagnostics), error.sources, args, stderr, use_color)
        return EXIT_ERROR
    except d.InputError as error:
        stderr.write(f"lbspec import: error: {error}\n")
        return EXIT_ERROR
    except (d.LbspecError, KeyboardInterrupt, BrokenPipeError):
        raise
    except Exception as error:  # a bug in an importer: one line, not a traceback
        raise d.InternalError(f"importing {', '.join(args.files)}: {type(error).__name__}: {error}") from error
    if args.output:
        try:
            replace_file(args.output, imported.text)
        except OSError as error:
            stderr.write(f"lbspec import: error: cannot write {args.output}: {_write_failure(error)}\n")
            return EXIT_ERROR
    else:
        stdout.write(imported.text)
    if not args.quiet or args.format == "json":
        _report(imported.diagnostics, imported.sources, args, stderr, use_color, imported.services)
    return EXIT_FINDINGS if imported.diagnostics else EXIT_OK


def _stderr_color(choice: str, stderr: TextIO) -> bool:
    if choice != "auto":
        return choice == "always"
    return hasattr(stderr, "isatty") and stderr.isatty() and "NO_COLOR" not in os.environ


def _report(diagnostics: list, sources: dict[str, str], args: argparse.Namespace, stderr: TextIO,
            color: bool, services: list[str] | None = None) -> None:
    from lbspec.render import render_json, render_text

    if args.format == "json":
        render_json(diagnostics, stderr, files=_file_entries(args.files, diagnostics, services),
                    services=services or [])
        return
    render_text(diagnostics, sources, stderr, color)
    if services is not None:
        count = len(diagnostics)
        stderr.write(f"lbspec import {args.kind}: {len(services)} service(s); "
                     f"{count} setting(s) not represented\n")


def _file_entries(files: list[str], diagnostics: list, services: list[str] | None) -> list[dict]:
    """`files` as docs/output.md has it for `lbspec check`.

    The files are read together as one configuration, so each entry carries the outcome of the whole import.
    """
    from lbspec.render.json import summary_counts

    summary = summary_counts(diagnostics)
    return [{"file": name, "ok": services is not None, "services": services or [], "summary": summary}
            for name in files]


def _write_failure(error: OSError) -> str:
    """Why ``-o`` cannot be written, in its terms: the error itself names the temporary file beside it."""
    if isinstance(error, FileNotFoundError):
        return "its directory does not exist"
    if isinstance(error, IsADirectoryError):
        return "it is a directory"
    return (error.strerror or str(error)).lower()


