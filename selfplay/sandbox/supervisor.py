"""The sandbox's supervisor: runs untrusted Python in a separate, contained process.

`run_python(code, limits)` writes the code to a fresh temporary directory and runs it with
`python -I -S -B` in a new session, with an EMPTY environment, stdin from /dev/null and only
fds 0-2 open. The child first runs `launcher.py` (stdlib only), which applies what
the kernel allows, then execs the interpreter on the code:

- always: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE = 0,
  PR_SET_NO_NEW_PRIVS, a wall timeout (the launcher SIGKILLs the program; a grace period
  later this supervisor SIGKILLs the whole process group), output captured and cut to
  `max_output_chars` per stream (head and tail kept) and the program killed once it has
  written `max_output_bytes`; the directory is deleted afterwards.
- namespaces (as root with CAP_SYS_ADMIN, or as a user where unprivileged user namespaces are
  enabled; docs/judges.md has the table of what holds where): a new network namespace (no
  interface but a downed loopback: no network at all, localhost included), a new PID
  namespace (the code runs as its pid 1, so every process it forks dies with it, even one
  that called setsid) with a private /proc, and a new mount namespace whose root is private:
  a tmpfs holding only the interpreter, the system's libraries (/usr, /lib…, the loader's
  cache), a few devices and the temporary directory, so the home directory, other temporary
  files, the runs' output directories and the store are not there to read; every mount in it
  is read-only except the temporary directory. Where that root cannot be built (pivot_root
  refused or unknown on the machine) the mount namespace still makes every mount read-only
  but the code sees the machine's files as its uid may read them; without a mount namespace
  at all, it sees them writable too where its uid may write.
- as root: the code runs under a throwaway uid (`SANDBOX_UID_BASE` + the launcher's pid) with
  no groups and no capabilities, so RLIMIT_NPROC holds (the kernel does not enforce it for
  uid 0) and counts this sandbox's processes only.

`SandboxResult.containment` records which of these layers held for the run, and
`network_isolated` whether the code could reach no network. The calling process never
raises for anything the code does: crashes, kills and limits are fields of the result.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from selfplay.sandbox import launcher
from selfplay.sandbox.launcher import PROGRAM, signal_name

_MAX_READ_BACK_BYTES = 1 << 20
# The supervisor's own deadline is the launcher's wall timeout plus this (interpreter start).
_GRACE_S = 2.0


@dataclass(frozen=True)
class Limits:
    """What one sandboxed run may use. Times in seconds, sizes in MiB unless named bytes."""

    wall_timeout_s: float = 5.0
    cpu_time_s: int = 5
    memory_mb: int = 512
    max_processes: int = 16
    max_file_mb: int = 16
    max_open_files: int = 64
    max_output_chars: int = 4000
    max_output_bytes: int = 1 << 20


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended.

    `exit_code` is None when the program died by a signal (`signal` names it). `killed_by`
    says what stopped it early: "timeout" (wall clock), "cpu" (RLIMIT_CPU), "memory" (an
    allocation over RLIMIT_AS), "file_size" (RLIMIT_FSIZE), "processes" (fork refused by
    RLIMIT_NPROC), "output" (more than max_output_bytes written), "signal" (any other signal),
    "setup" (the launcher failed before the code started), or None. stdout/stderr are cut
    to max_output_chars each (head and tail kept, `*_truncated` set).
    """

    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    killed_by: str | None
    wall_s: float
    cpu_s: float | None
    network_isolated: bool
    containment: dict[str, bool] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    uid: int | None = None
    setup_error: str | None = None

    @property
    def ok(self) -> bool:
        """The program ran to completion with exit status 0."""
        return self.exit_code == 0 and self.killed_by is None

    def describe(self, limits: Limits) -> str:
        """One line for a critique: how the run ended, in words."""
        reasons = {
            "timeout": f"timed out after {limits.wall_timeout_s:g} s (wall clock)",
            "cpu": f"killed after {limits.cpu_time_s} s of CPU time",
            "memory": f"ran out of memory (limit {limits.memory_mb} MiB)",
            "file_size": f"tried to write a file over {limits.max_file_mb} MiB",
            "processes": f"was refused new processes (limit {limits.max_processes})",
            "output": f"was killed after writing over {limits.max_output_bytes} bytes of output",
            "signal": f"was killed by {self.signal}",
            "setup": f"could not be started: {self.setup_error}",
        }
        if self.killed_by is not None:
            return reasons[self.killed_by]
        if self.exit_code == 0:
            return "exited normally"
        last = _last_line(self.stderr)
        return f"exited with status {self.exit_code}" + (f": {last}" if last else "")

    def to_trace(self) -> dict[str, Any]:
        """A JSON-serialisable record of the run for Verdict.trace (without `files`: their
        content is the caller's to parse, and may be large)."""
        trace = asdict(self)
        del trace["files"]
        return trace


def run_python(
    code: str,
    limits: Limits | None = None,
    read_back: tuple[str, ...] = (),
) -> SandboxResult:
    """Run `code` as a Python program in the sandbox and report how it ended; never raises for
    anything the code does. `read_back` names files (plain names in the working directory)
    whose text, up to 1 MiB each, is returned in `files` if the program wrote them."""
    limits = limits or Limits()
    workdir = tempfile.mkdtemp(prefix="selfplay-sandbox-")
    try:
        with open(os.path.join(workdir, PROGRAM), "w", encoding="utf-8") as fh:
            fh.write(code)
        return _supervise(workdir, limits, read_back)
    finally:
        _remove_tree(workdir)


def _remove_tree(path: str) -> None:
    """Delete the working directory, whatever modes the program left on it (non-root)."""
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            sub = os.path.join(dirpath, name)
            if not os.path.islink(sub):
                os.chmod(sub, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _supervise(workdir: str, limits: Limits, read_back: tuple[str, ...]) -> SandboxResult:
    status_r, status_w = os.pipe()
    argv = launcher.launch_argv(workdir, status_w, limits)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", launcher.__file__, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            cwd=workdir,
            close_fds=True,
            pass_fds=(status_w,),
            start_new_session=True,
        )
    finally:
        os.close(status_w)
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): _Capture(limits), proc.stderr.fileno(): _Capture(limits)}
    killed_by = _pump(proc, streams, start + limits.wall_timeout_s + _GRACE_S, limits)
    # The launcher is not reaped yet, so its process group id cannot have been reused: killing
    # the group is safe and catches stragglers where there is no PID namespace.
    _kill_group(proc.pid)
    proc.wait()
    wall_s = time.monotonic() - start
    proc.stdout.close()
    proc.stderr.close()
    status = _read_status(status_r)
    if killed_by is not None and "program_pid" in status:
        _wait_gone(status["program_pid"], deadline=time.monotonic() + 5.0)
    files = _read_back(workdir, read_back)
    return _result(proc.returncode, status, streams, killed_by, wall_s, limits, files)


class _Capture:
    """One output stream: its first and last bytes kept, the total counted."""

    def __init__(self, limits: Limits) -> None:
        self.half = 2 * limits.max_output_chars  # bytes; UTF-8 text is cut to chars afterwards
        self.max_chars = limits.max_output_chars
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        del self.tail[: max(0, len(self.tail) - self.half)]

    def text(self) -> tuple[str, bool]:
        head = self.head.decode("utf-8", "replace")
        tail = self.tail.decode("utf-8", "replace")
        if (
            len(head) + len(tail) <= self.max_chars
            and len(self.head) + len(self.tail) == self.total
        ):
            return head + tail, False
        keep = self.max_chars // 2
        head, tail = head[:keep], tail[-keep:]
        cut = self.total - len(head.encode()) - len(tail.encode())
        return f"{head}\n[... about {cut} bytes cut ...]\n{tail}", True


def _pump(
    proc: subprocess.Popen[bytes],
    streams: dict[int, _Capture],
    deadline: float,
    limits: Limits,
) -> str | None:
    """Read both pipes until they close and the launcher has exited. The launcher enforces
    the wall timeout itself; past `deadline` (its timeout plus a grace period) the whole group
    is killed here. Over max_output_bytes the launcher is told (SIGTERM) to kill the program.
    Returns "timeout" or "output" when this supervisor had to step in, else None."""
    sel = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    exited_at: float | None = None
    killed_by: str | None = None
    try:
        while sel.get_map() or exited_at is None:
            now = time.monotonic()
            if now >= deadline:
                _kill_group(proc.pid)
                return "timeout"
            if exited_at is None and _has_exited(proc.pid):
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                # The launcher is gone but something still holds the pipes: kill the group.
                _kill_group(proc.pid)
            if not sel.get_map():
                time.sleep(0.01)
                continue
            for key, _ in sel.select(min(deadline - now, 0.1)):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                streams[key.fd].add(chunk)
                total = sum(c.total for c in streams.values())
                if killed_by is None and total > limits.max_output_bytes:
                    killed_by = "output"
                    proc.send_signal(signal.SIGTERM)  # not reaped yet: the pid is still ours
        return killed_by
    finally:
        sel.close()


def _has_exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (WNOWAIT)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    return info is not None


def _wait_gone(pid: int, deadline: float) -> None:
    """Wait (bounded) until the program's process is gone or a zombie: with a PID namespace,
    its pid 1 is gone only once every process in it is."""
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"Z", b"X"):
            return
        time.sleep(0.01)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_status(fd: int) -> dict[str, Any]:
    """The launcher's status lines (setup, then exit); partial when it was killed."""
    data = bytearray()
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    return launcher.read_status(bytes(data))


def _read_back(workdir: str, names: tuple[str, ...]) -> dict[str, str]:
    """Regular files the program left in workdir; symlinks are never followed."""
    out = {}
    for name in names:
        if os.sep in name or name in ("", ".", ".."):
            raise ValueError(f"read_back takes plain file names, got {name!r}")
        try:
            fd = os.open(os.path.join(workdir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                out[name] = os.read(fd, _MAX_READ_BACK_BYTES).decode("utf-8", "replace")
        finally:
            os.close(fd)
    return out


def _result(
    returncode: int,
    status: dict[str, Any],
    streams: dict[int, _Capture],
    killed_by: str | None,
    wall_s: float,
    limits: Limits,
    files: dict[str, str],
) -> SandboxResult:
    (stdout, out_cut), (stderr, err_cut) = (c.text() for c in streams.values())
    exit_code: int | None = status.get("exit_code")
    sig: str | None = status.get("signal")
    if "exit_code" not in status and "signal" not in status:  # the launcher itself died
        exit_code, sig = (returncode, None) if returncode >= 0 else (None, signal_name(-returncode))
    cpu_s = status.get("cpu_s")
    setup_error = status.get("setup_error")
    if killed_by is None and status.get("killed") == "timeout":
        killed_by = "timeout"
    if killed_by is None:
        killed_by = _classify(exit_code, sig, cpu_s, stderr, limits, setup_error)
    return SandboxResult(
        exit_code=exit_code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        stdout_truncated=out_cut,
        stderr_truncated=err_cut,
        killed_by=killed_by,
        wall_s=wall_s,
        cpu_s=cpu_s,
        network_isolated=bool(status.get("containment", {}).get("network_namespace")),
        containment=status.get("containment", {}),
        uid=status.get("uid"),
        files=files,
        setup_error=setup_error,
    )


def _classify(
    exit_code: int | None,
    sig: str | None,
    cpu_s: float | None,
    stderr: str,
    limits: Limits,
    setup_error: str | None,
) -> str | None:
    """Which limit stopped a program that was not killed by the supervisor, if any."""
    if setup_error is not None:
        return "setup"
    if sig == "SIGXCPU" or (sig == "SIGKILL" and cpu_s is not None and cpu_s >= limits.cpu_time_s):
        return "cpu"
    if sig == "SIGXFSZ":
        return "file_size"
    if sig is not None:
        return "signal"
    if exit_code in (0, None):
        return None
    last = _last_line(stderr)
    if last.startswith("MemoryError"):
        return "memory"
    if "[Errno 27]" in last:  # EFBIG: CPython ignores SIGXFSZ, so the write raises
        return "file_size"
    if last.startswith("BlockingIOError") and "[Errno 11]" in last:  # EAGAIN from fork
        return "processes"
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
