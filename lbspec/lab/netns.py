"""Network namespaces, veth pairs and bridges: thin wrappers over `ip`, with cleanup that always runs.

Every namespace, interface and process made through a :class:`Resources` is
recorded and removed by :meth:`Resources.close` (also at interpreter exit, and
when the process is told to stop with SIGTERM, as a time limit or `timeout`
does), in reverse order, ignoring what is already gone -- so a failing or
stopped test leaves nothing behind.
"""

from __future__ import annotations

import atexit
import functools
import os
import secrets
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Sequence

__all__ = ["LabError", "run", "Namespace", "Resources", "namespaces_available", "unique_prefix"]


class LabError(RuntimeError):
    """The lab could not be built or driven (a command failed, a process did not start)."""


def run(argv: Sequence[str], timeout: float = 30.0, check: bool = True, input: str | None = None) -> str:
    """Run a command; its stdout, or LabError with its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout}s") from None
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def unique_prefix() -> str:
    """A short prefix for names: interface names have 15 characters at most."""
    return "lb" + secrets.token_hex(2)


@functools.lru_cache(maxsize=1)
def namespaces_available() -> str | None:
    """None if network namespaces, veth pairs and nftables can be used here; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = unique_prefix() + "probe"
    try:
        run(["ip", "netns", "add", probe], timeout=10)
        try:
            run(["ip", "netns", "exec", probe, "ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
            run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"])
        finally:
            run(["ip", "netns", "del", probe], check=False)
    except LabError as error:
        return f"cannot make network namespaces here: {error}"
    return None


class Namespace:
    """One network namespace."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 30.0, check: bool = True, input: str | None = None) -> str:
        return run(self.argv(argv), timeout=timeout, check=check, input=input)

    def ip(self, *argv: str) -> str:
        return run(["ip", "-n", self.name, *argv])

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")


class Resources:
    """What a lab made, to undo in reverse order."""

    def __init__(self):
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.closed = False
        self._finalizer = weakref.finalize(self, Resources._cleanup, self.namespaces, self.processes)
        atexit.register(self._finalizer)
        _LIVE.add(self)
        _on_terminate()

    def namespace(self, name: str) -> Namespace:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        namespace = Namespace(name)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def forget_namespace(self, name: str) -> None:
        run(["ip", "netns", "del", name], check=False)
        if name in self.namespaces:
            self.namespaces.remove(name)

    def spawn(self, argv: Sequence[str], ready: str | None = None, timeout: float = 10.0,
              stdout=subprocess.PIPE) -> subprocess.Popen:
        """Start a process; with ``ready``, wait until that word appears on its stdout or stderr."""
        process = subprocess.Popen(list(argv), stdout=stdout, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        self.processes.append(process)
        if ready is not None:
            _await(process, ready, timeout, argv)
        return process

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> str:
        """Stop ``process``; returns what it wrote to stderr and nobody read (tcpdump's counts, say)."""
        said = _stop(process, sig, timeout)
        if process in self.processes:
            self.processes.remove(process)
        return said

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._finalizer()

    @staticmethod
    def _cleanup(namespaces: list[str], processes: list[subprocess.Popen]) -> None:
        for process in processes:  # signal them all, then wait for each
            _signal(process, signal.SIGTERM)
        for process in reversed(processes):
            _stop(process, signal.SIGTERM, 3.0)
        processes.clear()
        for name in reversed(namespaces):
            run(["ip", "netns", "del", name], check=False)
        namespaces.clear()


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every Resources alive (a closed one's cleanup does nothing)


def _on_terminate() -> None:
    """On SIGTERM, undo every lab first, then die of it as before (atexit does not run then).  Only where
    nothing else handles SIGTERM, and from the main thread (where handlers are set)."""
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, functools.partial(_terminated, os.getpid()))


def _terminated(owner: int, number: int, _frame) -> None:
    if os.getpid() == owner:  # not in a process forked from it (it inherits the handler, not the labs)
        for resources in list(_LIVE):
            resources._finalizer()
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


def _await(process: subprocess.Popen, word: str, timeout: float, argv: Sequence[str]) -> None:
    """Wait for ``word`` on stdout (servers say it) or stderr (tcpdump says "listening on")."""
    import selectors

    selector = selectors.DefaultSelector()
    streams = [s for s in (process.stdout, process.stderr) if s is not None]
    for stream in streams:
        os.set_blocking(stream.fileno(), False)
        selector.register(stream, selectors.EVENT_READ)
    seen = ""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None and not selector.select(0):
                raise LabError(f"`{' '.join(argv)}` exited ({process.returncode}) before it was ready: {seen.strip()}")
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                chunk = key.fileobj.read() or ""
                seen += chunk
                if word in seen:
                    return
        raise LabError(f"`{' '.join(argv)}` was not ready after {timeout}s: {seen.strip()}")
    finally:
        selector.close()


def _signal(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass


def _stop(process: subprocess.Popen, sig: int, timeout: float) -> str:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(5)
    said = _leftover(process.stderr) if process.stderr is not None and not process.stderr.closed else ""
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return said


def _leftover(stream) -> str:
    """What a pipe from an ended process still holds -- read without waiting, for a child of it may hold the
    pipe open still."""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:  # nothing more now (EAGAIN)
        pass
    return b"".join(chunks).decode(errors="replace")
