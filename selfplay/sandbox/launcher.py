"""The sandbox's launcher: runs in the child process, before the untrusted program.

Started by `selfplay.sandbox.supervisor` as `python -I -S -B launcher.py WORKDIR STATUS_FD
WALL_S CPU_S MEMORY_MB PROCESSES FILE_MB OPEN_FILES` (stdlib only, and as few imports as it
can: its start-up is part of every sandboxed run). It enters the namespaces
the kernel allows, forks the program's process (the new PID namespace's pid 1), which gives
itself a private root (`_private_root`) and makes every mount read-only but its working
directory, applies the rlimits, drops to a throwaway uid when root and execs the interpreter on
the program with an empty environment. The launcher waits for it,
kills it at the wall timeout (or on SIGTERM from the supervisor) and reports JSON lines on
the status fd: the program's pid, the uid it ran as, which containment layers held, and how
it ended with its CPU time, as `key=repr(value)` lines (`read_status` parses them).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import stat
import sys

TYPE_CHECKING = False  # importing typing would cost every sandboxed run ~20 ms
if TYPE_CHECKING:
    from typing import Any

# A uid no account uses: the code runs as SANDBOX_UID_BASE + launcher pid when started as root.
SANDBOX_UID_BASE = 1_000_000_000
PROGRAM = "main.py"

# Linux ABI constants (the same on x86_64 and aarch64).
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_MOVE, _MS_BIND, _MS_REC, _MS_PRIVATE = 8192, 4096, 16384, 1 << 18
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # not the same: looked up by machine

# What the program's private root holds besides the interpreter, its working directory and a
# private /proc: the system's programs and shared libraries, the loader's cache, a few devices.
_SYSTEM_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
)  # fmt: skip


class _Limits:
    """The limits the launcher applies, from its command line (units as in `Limits`)."""

    def __init__(self, argv: list[str]) -> None:
        self.wall_timeout_s = float(argv[0])
        self.cpu_time_s, self.memory_mb, self.max_processes = map(int, argv[1:4])
        self.max_file_mb, self.max_open_files = map(int, argv[4:6])


def signal_name(num: int) -> str:
    """SIGKILL for 9; "signal N" for a number with no name."""
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def launch_argv(workdir: str, status_fd: int, limits: Any) -> list[str]:
    """The launcher's command-line arguments for a `Limits`."""
    numbers = (
        limits.wall_timeout_s,
        limits.cpu_time_s,
        limits.memory_mb,
        limits.max_processes,
        limits.max_file_mb,
        limits.max_open_files,
    )
    return [workdir, str(status_fd), *map(str, numbers)]


def read_status(data: bytes) -> dict[str, Any]:
    """The launcher's status lines merged into one dict (a partial one if it was killed)."""
    import ast  # the supervisor's side only: the launcher never needs it

    status: dict[str, Any] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            status[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            continue
    return status


def _launch(argv: list[str]) -> None:
    """Enter the namespaces the kernel allows, fork the program's process, report, wait."""
    workdir, status_fd, limits = argv[0], int(argv[1]), _Limits(argv[2:])
    libc = ctypes.CDLL(None, use_errno=True)
    root = os.geteuid() == 0
    launcher = os.getpid()
    held: dict[str, bool] = {"user_namespace": False}
    if not root:
        # Where unprivileged user namespaces are enabled, one grants what the others need.
        held["user_namespace"] = _unshare(libc, _CLONE_NEWUSER) and _map_self()
    held["mount_namespace"] = _unshare(libc, _CLONE_NEWNS)
    held["network_namespace"] = _unshare(libc, _CLONE_NEWNET) and _only_loopback()
    held["pid_namespace"] = _unshare(libc, _CLONE_NEWPID)
    pid = os.fork()  # with a new PID namespace the child is its pid 1
    if pid != 0:
        _write(status_fd, {"program_pid": pid})
    else:
        try:
            _enter_program(libc, workdir, limits, held, root, launcher, status_fd)
        except BaseException as err:  # report why the program never started
            _write(status_fd, {"setup_error": f"{type(err).__name__}: {err}"})
            os._exit(126)
    killed: list[str] = []

    def kill_program(signum: int, _frame: Any) -> None:
        # The program is our unreaped child, so its pid cannot have been reused yet.
        killed.append("timeout" if signum == signal.SIGALRM else "supervisor")
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, kill_program)
    signal.signal(signal.SIGTERM, kill_program)
    signal.setitimer(signal.ITIMER_REAL, limits.wall_timeout_s)
    _, wait_status, usage = os.wait4(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    report: dict[str, Any] = {"cpu_s": usage.ru_utime + usage.ru_stime}
    if killed:
        report["killed"] = killed[0]
    if os.WIFSIGNALED(wait_status):
        report["signal"] = signal_name(os.WTERMSIG(wait_status))
    else:
        report["exit_code"] = os.WEXITSTATUS(wait_status)
    _write(status_fd, report)


def _enter_program(
    libc: ctypes.CDLL,
    workdir: str,
    limits: _Limits,
    held: dict[str, bool],
    root: bool,
    launcher: int,
    status_fd: int,
) -> None:
    """In the program's process: private mounts, limits, a throwaway uid, then exec."""
    parent_before = os.getppid()  # 0 inside a new PID namespace
    if held["mount_namespace"] and libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        held["mount_namespace"] = False  # mounts would propagate back: touch nothing
    exe = os.path.realpath(sys.executable)
    if held["mount_namespace"]:
        held["private_root"] = _private_root(libc, workdir, exe, held)
        if not held["private_root"]:
            if root:
                _expose_interpreter(libc, workdir)
            held["private_proc"] = held["pid_namespace"] and _mount_private_proc(libc, "/proc")
        held["read_only_outside_workdir"] = _read_only_except(libc, workdir)
    else:
        held["private_root"] = held["private_proc"] = held["read_only_outside_workdir"] = False
    if root:
        uid = SANDBOX_UID_BASE + launcher
        for path in (workdir, os.path.join(workdir, PROGRAM)):
            os.chown(path, uid, uid)
    nproc = limits.max_processes
    if not root and not held.get("user_namespace"):
        # RLIMIT_NPROC counts every process of the real uid: leave room for the ones running.
        nproc += _processes_of(os.getuid())
    for res, value in (
        (resource.RLIMIT_CPU, (limits.cpu_time_s, limits.cpu_time_s + 1)),
        (resource.RLIMIT_AS, (limits.memory_mb << 20,) * 2),
        (resource.RLIMIT_FSIZE, (limits.max_file_mb << 20,) * 2),
        (resource.RLIMIT_NOFILE, (limits.max_open_files,) * 2),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NPROC, (nproc, nproc)),
    ):
        resource.setrlimit(res, value)
    if root:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    held["unprivileged_uid"] = os.getuid() != 0 and os.geteuid() != 0
    _write(status_fd, {"uid": os.getuid()})
    # RLIMIT_NPROC is not enforced for uid 0 (nor with CAP_SYS_ADMIN/CAP_SYS_RESOURCE).
    held["process_limit"] = held["unprivileged_uid"]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    # Die with the launcher (set after the uid change, which clears it).
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # A launcher that died before that left us to its reaper. Inside a new PID namespace
    # getppid() is always 0 and this cannot be seen; the supervisor's group kill still reaches
    # this process there.
    if os.getppid() != parent_before:
        os._exit(125)
    _write(status_fd, {"containment": held})
    os.set_inheritable(status_fd, False)  # closed by exec; still open to report its failure
    os.chdir(workdir)
    try:
        os.execve(exe, [exe, "-I", "-S", "-B", PROGRAM], {})
    except PermissionError as err:
        raise PermissionError(
            f"the sandbox's uid cannot run the interpreter {exe} ({err.strerror}); install "
            "Python where every user can read it, or allow mount namespaces"
        ) from None


def _unshare(libc: ctypes.CDLL, flags: int) -> bool:
    return libc.unshare(flags) == 0


def _map_self() -> bool:
    """In a new user namespace, map our own uid and gid (so files keep their owner)."""
    uid, gid = os.getuid(), os.getgid()
    try:
        with open("/proc/self/setgroups", "w") as fh:
            fh.write("deny")
        with open("/proc/self/uid_map", "w") as fh:
            fh.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as fh:
            fh.write(f"{gid} {gid} 1")
    except OSError:
        return False
    return True


def _only_loopback() -> bool:
    """The new network namespace has no interface but loopback (which starts down);
    /proc/self/net/dev lists the interfaces of the reader's network namespace."""
    with open("/proc/self/net/dev") as fh:
        names = [line.split(":", 1)[0].strip() for line in fh.readlines()[2:]]
    return names == ["lo"]


def _private_root(libc: ctypes.CDLL, workdir: str, exe: str, held: dict[str, bool]) -> bool:
    """Make the root a tmpfs holding only what the program needs, bind-mounted in place: the
    interpreter (prefix; executable and pyvenv.cfg if elsewhere), the libraries this process
    has loaded, `_SYSTEM_PATHS`, /proc (the private one with a PID namespace, mounted while the
    old root still shows one, as a user namespace requires: `held["private_proc"]`) and the
    working directory. The home directory, other temporary files, run directories and stores
    are then not there at all. Staged inside the working directory, then `pivot_root`ed to,
    the old root detached. False, nothing changed, where a step is refused (or pivot_root's
    number is unknown on this machine)."""
    pivot = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if pivot is None:
        return False
    stage = os.path.join(workdir, ".root")
    os.mkdir(stage, 0o700)
    try:
        _mount(libc, "tmpfs", stage, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755")
        for path in _needed_paths(exe):
            _bind_into(libc, stage, path, recursive=True)
        # Not recursive: the staged root mounted inside it stays out of the new root.
        _bind_into(libc, stage, workdir, recursive=False)
        _make_dirs(stage + "/proc")
        proc = held["pid_namespace"] and _mount_private_proc(libc, stage + "/proc")
    except OSError:
        libc.umount2(stage.encode(), _MNT_DETACH)
        os.rmdir(stage)
        return False
    os.chdir(stage)
    if libc.syscall(pivot, b".", b".") != 0:  # the old root now lies over the new one
        os.chdir("/")
        libc.umount2(stage.encode(), _MNT_DETACH)
        os.rmdir(stage)
        return False
    if libc.umount2(b".", _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"detaching the old root: {os.strerror(err)}")
    os.chdir("/")
    os.rmdir(stage)  # the staging mount point, seen from the new root: an empty directory
    held["private_proc"] = proc
    return True


def _needed_paths(exe: str) -> list[str]:
    """The paths the private root binds, outermost only (one under another is left out)."""
    wanted = {*_SYSTEM_PATHS, exe}
    wanted |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    bindir = os.path.dirname(exe)
    wanted |= {os.path.join(d, "pyvenv.cfg") for d in (bindir, os.path.dirname(bindir))}
    with open("/proc/self/maps") as fh:  # shared libraries, wherever this system keeps them
        wanted |= {f.split(None, 5)[5].rstrip("\n") for f in fh if len(f.split(None, 5)) == 6}
    out: list[str] = []
    for path in sorted(p for p in wanted if p.startswith("/") and os.path.lexists(p)):
        if not any(path.startswith(kept + "/") for kept in out):
            out.append(path)
    return out


def _bind_into(libc: ctypes.CDLL, root: str, path: str, recursive: bool) -> None:
    """`path` at the same place under `root`: a symlink copied, anything else bind-mounted."""
    target = root + path
    _make_dirs(os.path.dirname(target))
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        _make_dirs(target)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(libc, path, target, None, _MS_BIND | (_MS_REC if recursive else 0))


def _make_dirs(path: str) -> None:
    """Create the missing directories of `path`, each 0755 whatever the umask."""
    if os.path.isdir(path):
        return
    _make_dirs(os.path.dirname(path))
    os.mkdir(path)
    os.chmod(path, 0o755)


def _expose_interpreter(libc: ctypes.CDLL, workdir: str) -> None:
    """Let the throwaway uid run this interpreter when an ancestor of its prefix is closed to
    other users (e.g. pyenv under /root, mode 0700): in the mount namespace, that ancestor is
    covered by an empty tmpfs holding only the interpreter's prefix, bind-mounted read-only
    in place. The rest of the ancestor (e.g. root's dotfiles) stays hidden."""
    prefix = os.path.realpath(sys.base_prefix)
    closed = None
    path = "/"
    for part in prefix.strip("/").split("/"):
        path = os.path.join(path, part)
        if not os.stat(path).st_mode & stat.S_IXOTH:
            closed = path
            break
    if closed is None:
        return
    stage = os.path.join(workdir, ".interpreter")
    os.mkdir(stage, 0o755)
    _mount(libc, prefix, stage, None, _MS_BIND | _MS_REC)
    _mount(libc, "tmpfs", closed, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755")
    os.makedirs(prefix, mode=0o755, exist_ok=True)
    _mount(libc, stage, prefix, None, _MS_MOVE)
    os.rmdir(stage)


def _mount(
    libc: ctypes.CDLL, source: str, target: str, fstype: str | None, flags: int, data: str = ""
) -> None:
    fs = fstype.encode() if fstype else None
    if libc.mount(source.encode(), target.encode(), fs, flags, data.encode() or None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _mount_private_proc(libc: ctypes.CDLL, target: str) -> bool:
    """A proc at `target` that shows the sandbox's own PID namespace only (no other process's
    environ)."""
    flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    return libc.mount(b"proc", target.encode(), b"proc", flags, None) == 0


class _MountAttr(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 - ctypes wants a class attribute
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _read_only_except(libc: ctypes.CDLL, workdir: str) -> bool:
    """Make every mount read-only (mount_setattr, Linux >= 5.12), then the workdir writable
    again through a bind mount of its own; verified by trying to create a file beside it."""
    target = workdir.encode()
    if libc.mount(target, target, None, _MS_BIND | _MS_REC, None) != 0:
        return False
    setattr_ = libc.syscall
    ro = _MountAttr(attr_set=_MOUNT_ATTR_RDONLY)
    if setattr_(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(ro), 32) != 0:
        return False
    rw = _MountAttr(attr_clr=_MOUNT_ATTR_RDONLY)
    if setattr_(_SYS_MOUNT_SETATTR, _AT_FDCWD, target, 0, ctypes.byref(rw), 32) != 0:
        return False
    probe = os.path.join(os.path.dirname(workdir), f".selfplay-probe-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return True
    os.unlink(probe)
    return False


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue
    return count


def _write(fd: int, obj: dict[str, Any]) -> None:
    os.write(fd, "".join(f"{key}={value!r}\n" for key, value in obj.items()).encode())


if __name__ == "__main__":
    _launch(sys.argv[1:])
