"""Diagnostics: what lbspec has to say about a spec, a capture or a run.

Each kind of diagnostic has a stable code (``LB020``), a short name, a default
severity and a message template.  Checkers create diagnostics through their
kind (``UNKNOWN_POOL.at(span, name="ap")``) and return them; renderers in
:mod:`lbspec.render` print them.  Tests compare codes, never wording.

Codes:

* ``LB0xx`` -- the spec cannot be read: syntax and meaning (errors, exit 2).
* ``LB1xx`` -- static findings about a valid spec (``lbspec check``).
* ``LB2xx`` -- runtime verdicts about traffic (``lbspec monitor``).
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from lbspec.ir import Span

__all__ = [
    "Severity", "Note", "Diagnostic", "Kind", "KINDS", "suggest", "did_you_mean",
    "LbspecError", "SpecError", "InputError", "InternalError",
]


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 2, "warning": 1, "info": 0}[self.value]


@dataclass(frozen=True, slots=True)
class Note:
    """A secondary message, optionally pointing at another place in the source."""

    message: str
    span: Span | None = None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding: a code, a severity, a message and where it applies."""

    code: str
    severity: Severity
    message: str
    span: Span | None = None
    notes: tuple[Note, ...] = ()
    help: str | None = None
    label: str | None = None  # printed under the caret
    witness: Any = None  # a concrete counterexample, for findings that have one
    data: Any = None  # extra machine-readable facts (JSON-serialisable)

    @property
    def name(self) -> str:
        return KINDS[self.code].name if self.code in KINDS else self.code

    def with_severity(self, severity: Severity) -> Diagnostic:
        return replace(self, severity=severity)

    def witness_lines(self) -> list[str]:
        """The witness as lines to print: its summary, then its steps -- less the summary where the label
        already says it (LB100's label is its witness's summary)."""
        if self.witness is None or not hasattr(self.witness, "describe"):
            return []
        summary, *steps = (line.strip() for line in self.witness.describe())
        return steps if summary == self.label and steps else [summary, *steps]

    def sort_key(self) -> tuple:
        s = self.span
        return (s.file, s.line, s.column, self.code) if s else ("", 0, 0, self.code)


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of diagnostic: its code, name, default severity and template."""

    code: str
    name: str
    severity: Severity
    template: str
    summary: str = field(default="", compare=False)

    def at(self, span: Span | None, *, notes: Iterable[Note] = (), help: str | None = None,
           label: str | None = None, witness: Any = None, data: Any = None,
           **args: Any) -> Diagnostic:
        return Diagnostic(self.code, self.severity, self.template.format(**args), span,
                          tuple(notes), help, label, witness, data)


KINDS: dict[str, Kind] = {}


def kind(code: str, name: str, severity: Severity, template: str, summary: str) -> Kind:
    assert code not in KINDS, code
    KINDS[code] = k = Kind(code, name, severity, template, summary)
    return k


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word``, if one is close enough to be a typo."""
    matches = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    best = suggest(word, candidates)
    return f"did you mean `{best}`?" if best else None


E, W = Severity.ERROR, Severity.WARNING

# --- LB00x: reading and syntax -----------------------------------------------
UNREADABLE = kind("LB000", "unreadable-file", E, "cannot read {path}: {reason}",
                  "A spec file could not be read (missing, not a file, no permission, not UTF-8).")
UNEXPECTED_TOKEN = kind("LB001", "unexpected-token", E, "unexpected {found}",
                        "The parser met a token that cannot come here.")
UNEXPECTED_CHARACTER = kind("LB002", "unexpected-character", E, "unexpected character {char}",
                            "A character that no token of the language starts with.")
UNTERMINATED_STRING = kind("LB003", "unterminated-string", E, "unterminated string",
                           "A string has no closing quote on its line.")
UNEXPECTED_EOF = kind("LB004", "unexpected-end", E, "unexpected end of file",
                      "The file ends in the middle of a statement or block.")
TOO_DEEP = kind("LB005", "too-deep", E, "this nests more than {limit} levels deep",
                "A filter (of `not`, `and`, `or` and parentheses) nested deeper than any spec needs.")

# --- LB01x: includes ----------------------------------------------------------
INCLUDE_MISSING = kind("LB010", "include-missing", E, "cannot include {path}: {reason}",
                       "An included file does not exist or cannot be read.")
INCLUDE_CYCLE = kind("LB011", "include-cycle", E, "include cycle: {chain}",
                     "Files include each other in a loop.")

# --- LB02x: names -------------------------------------------------------------
UNKNOWN_POOL = kind("LB020", "unknown-pool", E, "unknown pool `{name}`",
                    "A rule or failover names a pool the service does not declare.")
UNKNOWN_BACKEND = kind("LB021", "unknown-backend", E, "unknown backend or pool `{name}`",
                       "A failover or assertion names a backend the service does not declare.")
UNKNOWN_PROPERTY = kind("LB022", "unknown-property", E, "unknown property `{name}`",
                        "`require` or `waive` names a property that is neither in the library nor defined.")
DUPLICATE_NAME = kind("LB023", "duplicate-name", E, "{what} `{name}` is defined twice",
                      "Two services, pools, backends or properties share a name.")
DUPLICATE_STATEMENT = kind("LB024", "duplicate-statement", E, "`{what}` is given twice",
                           "A statement or option that may appear once appears again.")
MISSING_STATEMENT = kind("LB025", "missing-statement", E, "service `{service}` has no `{what}`",
                         "A service lacks a statement it cannot do without (vip, listen).")
NO_SERVICE = kind("LB026", "no-service", E, "{path} declares no service: there is nothing to check",
                 "A spec given to `lbspec check` that is empty, or holds only properties and includes.")
LISTENER_CONFLICT = kind("LB027", "listener-conflict", E, "{listener} is also claimed by service `{other}`",
                         "Two services listen on the same VIP, protocol and port: the LB cannot tell which one "
                         "a packet belongs to.")

# --- LB03x: values ------------------------------------------------------------
INVALID_ADDRESS = kind("LB030", "invalid-address", E, "invalid address `{text}`: {reason}",
                       "An IPv4 or IPv6 address that does not parse.")
INVALID_PREFIX = kind("LB031", "invalid-prefix", E, "invalid prefix `{text}`: {reason}",
                      "A prefix whose length is out of range or whose host bits are set.")
PORT_RANGE = kind("LB032", "port-out-of-range", E, "port {port} is out of range",
                  "Ports run from 0 to 65535 (1 to 65535 where a real port is meant).")
EMPTY_RANGE = kind("LB033", "empty-port-range", E, "port range {low}-{high} is empty",
                   "A range whose first port is above its last.")
NEGATIVE_WEIGHT = kind("LB034", "negative-weight", E, "weight {value} is negative",
                       "Weights are 0 or more; 0 means the backend takes no new traffic.")
UNKNOWN_UNIT = kind("LB035", "unknown-unit", E, "{problem} in `{text}`",
                    "A quantity with a unit lbspec does not know, or with none.")
WRONG_QUANTITY = kind("LB036", "wrong-quantity", E, "expected {expected}, found `{text}`",
                      "A duration where a percentage belongs, or the other way round.")
FAMILY_MISMATCH = kind("LB037", "family-mismatch", E, "{family} prefix `{text}` in a service with no {family} VIP",
                       "A rule or assertion matches sources of an address family the service never receives.")
OUT_OF_RANGE = kind("LB038", "value-out-of-range", E, "{what} {value} is out of range: {reason}",
                    "A number that makes no sense where it stands (fall 0, timeout longer than interval...).")
PORTS_NOT_APPLICABLE = kind("LB039", "ports-not-applicable", E, "{what}",
                            "Ports given where they mean nothing (icmp, a GUE port on ipip, a port with no protocol).")

# --- LB04x: properties --------------------------------------------------------
WAIVER_WITHOUT_REASON = kind("LB040", "waiver-without-reason", E, "waiver of `{name}` gives no reason",
                             "Every `waive` must say why, in a quoted string.")
CONFLICTING_PROPERTY = kind("LB041", "conflicting-property", E, "property `{name}` is {problem}",
                            "A property both required and waived, or waived twice.")
PARAMETER_NOT_APPLICABLE = kind("LB042", "parameter-not-applicable", E, "{problem}",
                                "A `require` parameter that the property's pattern does not take.")
FILTER_TYPE = kind("LB043", "filter-type", E, "{problem}",
                   "A filter compares a field with a value of the wrong kind, or uses an unknown word.")
FAILOVER_TARGET = kind("LB044", "failover-target", E, "{problem}",
                       "A failover target that is not a backup backend or a pool.")
INVALID_ENCAP = kind("LB045", "invalid-encapsulation", E, "{problem}",
                     "Tunnel settings that do not fit the encapsulation.")

# --- LB1xx: static findings (lbspec check) ------------------------------------
NOT_GUARANTEED = kind("LB100", "property-not-guaranteed", E, "{property} is not guaranteed: {reason}",
                      "The spec allows behaviour that breaks a library or user property; a witness shows how.")
UNCOVERED_TRAFFIC = kind("LB101", "uncovered-traffic", W, "listened traffic that no rule and no `otherwise` covers",
                         "Some packets the service listens for match no `forward` rule, and there is no `otherwise`.")
OVERLAPPING_RULES = kind("LB102", "overlapping-rules", W, "rules overlap with different targets",
                         "Two rules match some of the same packets and send them to different pools; order decides.")
SHADOWED_RULE = kind("LB103", "shadowed-rule", W, "this rule never matches: {reason}",
                     "Earlier rules (or the listeners) leave no packet for this rule.")
PER_PACKET_BALANCING = kind("LB104", "per-packet-balancing", W, "{protocol} is balanced packet by packet",
                            "A connection protocol without affinity: packets of one connection may reach different backends.")
DETECTION_WINDOW = kind("LB105", "detection-window", W, "{what}",
                        "How long new flows may reach a dead backend, from the health settings.")
UNREACHABLE_BACKEND = kind("LB106", "unreachable-backend", W, "{what} can never be selected: {reason}",
                           "A backend or pool no packet can reach (weight 0, backups with no failover, family mismatch...).")
CONTRADICTION = kind("LB107", "contradiction", E, "{what}",
                     "User assertions contradict the configuration; the conflicting lines are shown.")
VACUOUS = kind("LB108", "vacuous", W, "{what}",
               "An assertion or waiver whose condition can never hold, so it says nothing.")
HASH_WITHOUT_TRACKING = kind("LB109", "hash-without-tracking", W, "{what}",
                             "Hash balancing without connection tracking: flows move when the backend set changes.")
CAPACITY = kind("LB110", "capacity", W, "{what}",
                "The backends' declared limits cannot carry the declared load.")
UNKNOWN_RESULT = kind("LB111", "unknown", W, "could not decide {property} within {seconds}",
                      "The solver ran out of time or resources; the property is neither proven nor refuted.")
HOLDS = kind("LB112", "property-holds", Severity.INFO, "{property} holds",
             "With --explain: a property the spec guarantees, and the spec lines it rests on.")

# --- LB2xx: runtime verdicts (lbspec monitor) ---------------------------------
DROP = kind("LB200", "drop", E, "{what}",
            "A listened packet left no egress within the deadline while a healthy backend existed.")
AFFINITY_BREAK = kind("LB201", "affinity-break", E, "{what}",
                      "Packets of one flow (or client) reached different backends while the first stayed healthy.")
DOWN_BACKEND = kind("LB202", "down-backend", E, "{what}",
                    "Traffic went to a backend known to be down, after the detection window.")
UNDECLARED_DESTINATION = kind("LB203", "undeclared-destination", E, "{what}",
                              "The LB sent traffic to an address or port the spec does not declare.")
MUTATION = kind("LB204", "mutation", E, "{what}",
                "A payload or header field changed beyond the rewrite the mode allows.")
DUPLICATE = kind("LB205", "duplicate", E, "{what}", "The LB sent the same packet more than once.")
IMBALANCE = kind("LB206", "imbalance", E, "{what}",
                 "Backend shares differ from the weights more than chance explains (with its p-value).")
UNTRANSLATED_REPLY = kind("LB207", "untranslated-reply", E, "{what}",
                          "A reply reached the client from a backend address instead of the VIP.")
EGRESS_WITHOUT_INGRESS = kind("LB208", "egress-without-ingress", E, "{what}",
                              "The LB sent a packet toward a backend that no client packet explains.")
CAPTURE_GAP = kind("LB209", "capture-gap", W, "{what}",
                   "The capture missed packets (a backend acknowledged bytes never seen), or holds one side of "
                   "the LB only: not an LB drop.")
UNDECODABLE = kind("LB210", "undecodable", Severity.INFO, "{what}",
                   "Frames that could not be decoded, counted rather than fatal.")
EVICTIONS = kind("LB211", "flow-evictions", W, "{what}",
                 "Flow state was evicted to bound memory; verdicts on those flows may be incomplete.")
CLOCK_SKEW = kind("LB212", "clock-skew", Severity.INFO, "{what}",
                  "The estimated clock offset between the client-side and backend-side captures.")
FORBIDDEN_BACKEND = kind("LB213", "forbidden-backend", E, "{what}",
                         "Traffic reached a backend that a property (`assert ... only`, `never forward to`) rules out for it.")
UNATTRIBUTED = kind("LB214", "unattributed", Severity.INFO, "{what}",
                    "dsr packets to MAC addresses nothing in the capture tied to a backend: which backend got "
                    "them is not known, so they are judged as packets (drops, duplicates, changes) but not per "
                    "backend.")
REPLY_NOT_RELAYED = kind("LB215", "reply-not-relayed", E, "{what}",
                         "A reply a backend sent back never reached the client, which was still there to take it "
                         "(nat, snat, a proxy's UDP: the LB dropped it; a proxy's TCP: it closed the client's "
                         "connection without it).")
BAD_CAPTURE = kind("LB290", "bad-capture", E, "{what}",
                   "A capture that cannot be read: missing, truncated header, unknown link type, no permission.")
WITNESS_UNWRITTEN = kind("LB291", "witness-unwritten", W, "{what}",
                         "Witness captures could not be written (a full disk, a directory gone): the verdicts "
                         "stand, without their files; the run exits 2.")

# --- LB3xx: importers (lbspec import) -----------------------------------------
BAD_CONFIG = kind("LB300", "bad-config", E, "{what}",
                  "A load balancer configuration that cannot be read or parsed.")
NOT_REPRESENTED = kind("LB301", "not-represented", W, "{what}",
                       "A configuration setting the spec language cannot express; the output carries a comment.")

# --- LB09x: the tool itself ---------------------------------------------------
INTERNAL = kind("LB099", "internal-error", E, "internal error: {problem}",
                "A bug in lbspec, not in your input; please report it with the input.")


class LbspecError(Exception):
    """The root of every error lbspec raises on purpose."""


class SpecError(LbspecError, ValueError):
    """A spec that cannot be loaded; ``diagnostics`` says why and where."""

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = tuple(diagnostics)
        self.sources = sources or {}
        first = next((d for d in self.diagnostics if d.severity is Severity.ERROR), None)
        where = f"{first.span}: " if first and first.span else ""
        text = f"{where}{first.code} {first.message}" if first else "invalid spec"
        more = len(self.diagnostics) - 1
        super().__init__(text + (f" (and {more} more)" if more > 0 else ""))


class InputError(LbspecError, ValueError):
    """Bad input other than a spec: a missing file, a corrupt capture, a bad option."""


class InternalError(LbspecError, RuntimeError):
    """lbspec contradicted itself (a witness the evaluator rejects, say): a bug."""
