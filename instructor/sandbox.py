"""Where grade.py runs a submission's code: a bubblewrap sandbox, inside process limits.

A check imports the submission's modules, and module code runs at import time: whatever the
grading account can do, a submission could do, unless the process is fenced in. bubblewrap
(`bwrap`, https://github.com/containers/bubblewrap) builds a throw-away view of the file system
in new Linux namespaces, without privileges of its own. The view given to a check:

    /usr, /bin, /lib ...   the system, read-only; no /etc, /home, /root, /work, nor the real /tmp
    the Python prefixes    the interpreter and its virtual environment, read-only, at their real paths
    /grader/<view>         what grade.py names: the submission's copy and scratch folders writable,
                           the harness, the drawn inputs and the checkpoint read-only
plus a private /proc and /dev, no network (a new network namespace holds only its own loopback),
no capabilities, and its own process tree, which dies with the grader. The reference files and
the other submissions are simply not in the view.

Where bubblewrap cannot start (a container running the grader as root without user namespaces,
as on Gradescope), the container mode runs the check as the unprivileged account `nobody`
instead (ContainerAccount: the references unreadable to it, the same limits, the network not cut),
only when asked for; every report names the mode its checks ran in.

Every kind of run keeps the same process limits (address space, CPU time, file size, a wall-clock
limit that kills the whole process group, an output limit), which bwrap and everything under it inherit.
"""

import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

UNSAFE_EXPLANATION = (
    "without a sandbox a submission's code runs with this account's rights: it can read every file the "
    "account can (the reference files, the other submissions, your home folder), write wherever the account "
    "can, and reach the network; only the time and memory limits hold. Install bubblewrap "
    "(apt-get install bubblewrap) or grade on a machine or account that holds nothing else.")


SCRATCH = "tmp"  # the view that a sandbox mounts as /tmp


class SandboxUnavailable(Exception):
    """bubblewrap is missing or cannot create namespaces here; the message says which."""


@dataclass
class View:
    """A host folder or file that a check sees, as `name` (writable or not)."""
    name: str
    host: Path
    writable: bool = False


def python_in_prefix() -> Path:
    """This interpreter, by a path that keeps its virtual environment: a venv is recognised from
    the folder of the path Python was started with, so symlinks above it are resolved but the
    path inside the prefix is kept."""
    executable = Path(os.path.abspath(sys.executable))
    try:
        return Path(sys.prefix).resolve() / executable.relative_to(os.path.abspath(sys.prefix))
    except ValueError:
        return executable


class Isolation:
    """What every way of running a check has: hooks around each run (only the container mode
    needs them: bwrap's --die-with-parent and the killed process group clean up the others)."""
    max_processes: int | None = None  # RLIMIT_NPROC of the check's account; None: not limited

    def prepare(self, views: list[View]) -> None:
        """Make the views usable by the account the check runs as."""

    def finish(self) -> None:
        """Stop whatever the check left running."""


class Bubblewrap(Isolation):
    """Runs a command in a bwrap sandbox (see the module docstring)."""

    def __init__(self, bwrap: str):
        self.bwrap = bwrap
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.split()
        self.description = (f"bubblewrap {version[-1] if version else ''}: no network, read-only system, "
                            "writable: the submission's copy only; references and other submissions not visible")

    def path(self, view: View) -> str:
        """Where the check sees `view`: the scratch folder is /tmp, the others are under /grader;
        a file keeps its name (loaders go by the suffix)."""
        if view.name == SCRATCH:
            return "/tmp"
        inside = f"/grader/{view.name}"
        return f"{inside}/{view.host.name}" if view.host.is_file() else inside

    def _system(self) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):  # merged /usr: keep the link, not a second copy of /usr
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for prefix in sorted({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}):
            if not Path(prefix).is_relative_to("/usr"):
                args += ["--ro-bind", prefix, prefix]
        return args

    def wrap(self, command: list[str], views: list[View], cwd: View | None) -> list[str]:
        args = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        for view in views:
            args += ["--bind" if view.writable else "--ro-bind", str(view.host), self.path(view)]
        # After the views: a virtual environment under /tmp stays visible above the scratch /tmp.
        args += [*self._system(), "--proc", "/proc", "--dev", "/dev"]
        if cwd is not None:
            args += ["--chdir", self.path(cwd)]
        return [*args, "--", *command]

    def try_out(self) -> None:
        """Run Python in an empty sandbox once; SandboxUnavailable with bwrap's words if it fails
        (no user namespaces, a seccomp profile that forbids them, ...)."""
        try:
            done = subprocess.run(self.wrap([str(python_in_prefix()), "-I", "-c", "import sys"], [], None),
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SandboxUnavailable(f"{self.bwrap} does not run: {err}") from None
        if done.returncode != 0:
            raise SandboxUnavailable(f"{self.bwrap} cannot build a sandbox here: {done.stderr.strip()[-300:]}")


class Unsandboxed(Isolation):
    """--unsafe-no-sandbox: the command runs as it is, with the process limits only."""
    description = "none (--unsafe-no-sandbox): process limits only; the code ran with the grading account's rights"

    def path(self, view: View) -> str:
        return str(view.host)

    def wrap(self, command: list[str], views: list[View], cwd: View | None) -> list[str]:
        return command


class ContainerAccount(Isolation):
    """Container mode, for where bubblewrap cannot start (Gradescope runs the grader as root in a
    container that may forbid new namespaces): the check runs as an unprivileged account, the
    autograder's own (ACCOUNTS: setup.sh creates it) or else `nobody`, switched to by setpriv
    (util-linux) with no groups and no way back to root.
    The files that account must not read (`private`: the references, the gold data) are made
    readable by root alone; each check's writable views are handed to the account, its read-only
    views made readable. The process limits hold as in the other modes, and the account may run at
    most max_processes processes; after each check every process of the account is killed.
    Unlike bubblewrap it does not cut the network or hide the system's files, and every report says so."""
    max_processes = 256

    def __init__(self, reason: str, private: list[Path]):
        account = next(name for name in (*ACCOUNTS, None) if name is None or _exists(name))
        if account is None:
            raise SandboxUnavailable(f"{reason}; container mode needs one of the accounts {', '.join(ACCOUNTS)}")
        entry = pwd.getpwnam(account)
        setpriv = shutil.which("setpriv")
        self.uid, self.gid, self.setpriv = entry.pw_uid, entry.pw_gid, setpriv and os.path.abspath(setpriv)
        if os.geteuid() != 0 or self.setpriv is None:
            raise SandboxUnavailable(f"{reason}; container mode needs root and setpriv (util-linux)")
        for path in private:
            _restrict(path)
        self.description = (f"container mode (bubblewrap cannot run here: {reason}): the code ran as the "
                            f"unprivileged account {account} (uid {self.uid}), which cannot read the references or "
                            "the gold data, with the time, memory and output limits and at most "
                            f"{self.max_processes} processes; the network was not cut off")

    def path(self, view: View) -> str:
        return str(view.host)

    def prepare(self, views: list[View]) -> None:
        for view in views:
            for parent in view.host.parents:  # traversable, not listable
                os.chmod(parent, os.stat(parent).st_mode | 0o001)
            for path in [view.host, *(view.host.rglob("*") if view.host.is_dir() else [])]:
                if view.writable:
                    os.chown(path, self.uid, self.gid, follow_symlinks=False)
                elif not path.is_symlink():
                    os.chmod(path, os.stat(path).st_mode | (0o005 if path.is_dir() else 0o004))

    def wrap(self, command: list[str], views: list[View], cwd: View | None) -> list[str]:
        return [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--no-new-privs",
                "--", *command]

    def finish(self) -> None:
        """Kill what the account left running (a process that left the check's process group)."""
        subprocess.run(self.wrap(["kill", "-KILL", "-1"], [], None), capture_output=True)


# The accounts the container mode runs checks as, the first that exists: gradescope.py's setup.sh
# creates the first, which nothing else uses (finish() kills every process of the account).
ACCOUNTS = ("minllama-student", "nobody")


def _exists(account: str) -> bool:
    try:
        pwd.getpwnam(account)
        return True
    except KeyError:
        return False


def _restrict(path: Path) -> None:
    """Readable by its owner (root) alone."""
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if not item.is_symlink():
            os.chmod(item, 0o700 if item.is_dir() else 0o600)


def find_bubblewrap() -> Bubblewrap:
    """A working bubblewrap, or SandboxUnavailable saying why there is none."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    sandbox = Bubblewrap(bwrap)
    sandbox.try_out()
    return sandbox


OUTPUT_LIMIT = 256 * 2**20  # bytes a check may print (RLIMIT_FSIZE on its log): a flood stops there
KEPT_OUTPUT = 1024  # bytes kept from each end of a check's log: the start says what ran, the end why it stopped


def _limit_resources(memory_bytes: int, cpu_seconds: int, max_processes: int | None):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if max_processes is not None:  # per user: it binds the container mode's own account
            resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    return apply


@dataclass
class Finished:
    """How a limited run ended: its exit code (None: killed at the time limit), the end of its
    output, the seconds it took and how many bytes it printed."""
    code: int | None
    tail: str
    seconds: float
    output_bytes: int

    @property
    def output_limit_hit(self) -> bool:
        return self.output_bytes >= OUTPUT_LIMIT


def trim_log(log: Path) -> str:
    """Keep the first and last KEPT_OUTPUT bytes of a log, with a line saying how much was cut;
    returns the last 4000 bytes, the part a report quotes."""
    size = log.stat().st_size
    with open(log, "rb") as output:
        output.seek(max(0, size - 4000))
        tail = output.read().decode(errors="replace")
        if size > 2 * KEPT_OUTPUT:
            output.seek(0)
            head = output.read(KEPT_OUTPUT)
            output.seek(size - KEPT_OUTPUT)
            end = output.read()
            log.write_bytes(head + f"\n[... {size - 2 * KEPT_OUTPUT} bytes cut ...]\n".encode() + end)
    return tail


def run_limited(command: list[str], cwd: Path, env: dict, timeout_s: float, memory_mb: int,
                log: Path, max_processes: int | None = None) -> Finished:
    """Run `command` in its own session with rlimits; kill its whole process group at the time
    limit (bwrap's --die-with-parent takes the sandbox down with it). Its output goes to `log`,
    trimmed afterwards to its two ends (trim_log)."""
    start = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_limit_resources(memory_mb * 2**20, int(timeout_s) + 5, max_processes))
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the child and anything it started
            except ProcessLookupError:
                pass
            process.wait()
    size = log.stat().st_size
    return Finished(code, trim_log(log), time.monotonic() - start, size)


def remove(path: Path) -> None:
    """Delete a file or a work folder, also one whose submission took the permissions off its own
    folders (symlinks are removed, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if not path.exists():
        return
    os.chmod(path, 0o700)
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o700)
    shutil.rmtree(path)
