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

Both kinds of run keep the same process limits (address space, CPU time, file size, a wall-clock
limit that kills the whole process group), which bwrap and everything under it inherit.
"""

import os
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


class Bubblewrap:
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


class Unsandboxed:
    """--unsafe-no-sandbox: the command runs as it is, with the process limits only."""
    description = "none (--unsafe-no-sandbox): process limits only; the code ran with the grading account's rights"

    def path(self, view: View) -> str:
        return str(view.host)

    def wrap(self, command: list[str], views: list[View], cwd: View | None) -> list[str]:
        return command


def find_bubblewrap() -> Bubblewrap:
    """A working bubblewrap, or SandboxUnavailable saying why there is none."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    sandbox = Bubblewrap(bwrap)
    sandbox.try_out()
    return sandbox


def _limit_resources(memory_bytes: int, cpu_seconds: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 2**20, 256 * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_limited(command: list[str], cwd: Path, env: dict, timeout_s: float, memory_mb: int,
                log: Path) -> tuple[int | None, str, float]:
    """Run `command` in its own session with rlimits; kill its whole process group at the time
    limit (bwrap's --die-with-parent takes the sandbox down with it). Returns (exit code or None
    on timeout, the output's tail, seconds)."""
    start = time.monotonic()
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_limit_resources(memory_mb * 2**20, int(timeout_s) + 5))
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
    with open(log, "rb") as output:
        output.seek(max(0, log.stat().st_size - 4000))
        tail = output.read().decode(errors="replace")
    return code, tail, time.monotonic() - start


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
