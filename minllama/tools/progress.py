"""Where your assignment stands: `python -m minllama.tools.progress`.

Runs the student checks (`python -m pytest -q tests/student`, whose output ends with this summary too):
every piece your course asks for, in the order structure.md teaches them, with its state

    todo      its body is still `# todo` / `raise NotImplementedError`
    failing   written, but one of its checks fails (the first failure's message is shown)
    passing   written, and every check of it passes

then the grader checks (rope_test.py, optimizer_test.py, sanity_check.py) and the one command to
run next. A piece's checks are the student checks whose names carry its word (the `-k` of the
command shown). A piece whose checks fail only because a piece it builds on is still a todo says
so: the message is that piece's NotImplementedError.
"""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from support.course import default

REPO_ROOT = Path(__file__).resolve().parents[2]
STUDENT_CHECKS = "tests/student"


@dataclass(frozen=True)
class Piece:
    """One function students write: its region (file:function) and the word its checks' names carry."""
    region: str
    checks: str

    @property
    def path(self) -> str:
        return self.region.split(":")[0]

    @property
    def function(self) -> str:
        return self.region.split(":")[1]


# In structure.md's order. tests/test_progress.py checks that this is every region of the solution's
# course files, and that every piece has student checks.
PIECES = (
    Piece("llama.py:RMSNorm._norm", "rmsnorm"),
    Piece("llama.py:LayerNorm._norm", "layernorm"),
    Piece("rope.py:apply_rotary_emb", "rope"),
    Piece("llama.py:Attention.compute_query_key_value_scores", "attention_scores"),
    Piece("llama.py:Attention.forward", "attention_forward"),
    Piece("llama.py:FeedForward.SwiGLU", "swiglu"),
    Piece("llama.py:LlamaLayer.forward", "layer_is"),
    Piece("llama.py:Llama.forward", "model_forward"),
    Piece("llama.py:sample_next_token", "sampling"),
    Piece("llama.py:Llama.generate", "generat"),
    Piece("optimizer.py:AdamW.step", "adam"),
    Piece("classifier.py:LlamaEmbeddingClassifier.forward", "embedding_classifier"),
    Piece("lora.py:LoRALayer.forward", "lora_layer"),
)
# Each grader check, the line it prints when it passes, and what it needs that setup.sh downloads.
GRADER_CHECKS = (("rope_test.py", "Rotary embedding test passed!", None),
                 ("optimizer_test.py", "Optimizer test passed!", None),
                 ("sanity_check.py", "Your Llama implementation is correct!", "stories42M.pt"))


def pieces_here(root: Path = REPO_ROOT) -> list[Piece]:
    """The pieces this copy's course asks for: its files hold them and the course does not solve them."""
    solved = default().solved
    return [piece for piece in PIECES if (root / piece.path).is_file() and piece.region not in solved]


def find_function(tree: ast.Module, qualified: str) -> ast.FunctionDef | None:
    """The definition of `Class.method` or `function` at the top of a module."""
    scope = tree.body
    *owners, name = qualified.split(".")
    for owner in owners:
        scope = next((node.body for node in scope if isinstance(node, ast.ClassDef) and node.name == owner), [])
    return next((node for node in scope if isinstance(node, ast.FunctionDef) and node.name == name), None)


def is_todo(root: Path, piece: Piece) -> bool:
    """True while the function's body still raises NotImplementedError in place of code."""
    function = find_function(ast.parse((root / piece.path).read_text(encoding="utf-8")), piece.function)
    if function is None:
        raise ValueError(f"{piece.path} has no {piece.function}: it must keep its name (structure.md)")
    for statement in function.body:
        if isinstance(statement, ast.Raise) and statement.exc is not None:
            raised = statement.exc.func if isinstance(statement.exc, ast.Call) else statement.exc
            if isinstance(raised, ast.Name) and raised.id == "NotImplementedError":
                return True
    return False


@dataclass(frozen=True)
class Outcome:
    """What one student check did: "passed", "failed" or "skipped", and the first line of a failure."""
    name: str
    outcome: str
    message: str = ""


def outcomes_of(stats: dict) -> list[Outcome]:
    """The checks' outcomes from pytest's terminal reporter (its `stats`: outcome -> reports)."""
    outcomes = []
    for kind in ("passed", "failed", "error", "skipped"):
        for report in stats.get(kind, []):
            if not hasattr(report, "nodeid") or (kind == "passed" and report.when != "call"):
                continue
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message.splitlines()[0] if crash is not None and crash.message else ""
            outcomes.append(Outcome(report.nodeid.split("::")[-1], "failed" if kind == "error" else kind, message))
    return outcomes


def piece_state(root: Path, piece: Piece, outcomes: list[Outcome]) -> tuple[str, str]:
    """(state, detail) of one piece after a run of the student checks."""
    if is_todo(root, piece):
        return "todo", ""
    mine = [o for o in outcomes if piece.checks in o.name.lower()]
    failed = [o for o in mine if o.outcome == "failed"]
    if failed:
        return "failing", f"{failed[0].name}: {failed[0].message}"
    if not any(o.outcome == "passed" for o in mine):
        return "not checked", "its checks did not run this time"
    return "passing", ""


def grader_state(root: Path, script: str, passed_line: str, needs: str | None) -> tuple[str, str]:
    """(state, detail) of one grader check, run as the grader runs it."""
    if needs is not None and not (root / needs).is_file():
        return "cannot run", f"needs {needs} (bash setup.sh)"
    result = subprocess.run([sys.executable, script], cwd=root, capture_output=True, text=True, timeout=600)
    if result.returncode == 0 and passed_line in result.stdout:
        return "passing", ""
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return "failing", lines[-1] if lines else f"exit {result.returncode}"


def check_command(piece: Piece) -> str:
    return f'python -m pytest -q {STUDENT_CHECKS} -k "{piece.checks}"'


def summary(root: Path, outcomes: list[Outcome], run_graders: bool = True) -> str:
    """The summary: each piece's state, each grader check's, and what to run next."""
    pieces = [(piece, *piece_state(root, piece, outcomes)) for piece in pieces_here(root)]
    width = max(len(piece.region) for piece, _, _ in pieces)
    lines = ["", "your progress (python -m minllama.tools.progress):"]
    lines += [f"  {state:<11} {piece.region:<{width}}  {detail}".rstrip() for piece, state, detail in pieces]
    if run_graders:
        with ThreadPoolExecutor(len(GRADER_CHECKS)) as pool:
            graders = list(pool.map(lambda check: (check[0], *grader_state(root, *check)), GRADER_CHECKS))
    else:
        graders = [(script, "not run", "only after the whole of tests/student") for script, _, _ in GRADER_CHECKS]
    lines.append("grader checks:")
    lines += [f"  {state:<11} {script:<{width}}  {detail}".rstrip() for script, state, detail in graders]
    lines.append(f"next: {next_command(pieces, graders)}")
    return "\n".join(lines) + "\n"


def next_command(pieces: list, graders: list) -> str:
    """The first piece not passing, in the order of structure.md; then the first grader check not
    passing; then the first command of the assignment itself."""
    for piece, state, _ in pieces:
        if state == "todo":
            return f"write {piece.function} in {piece.path}, then {check_command(piece)}"
        if state != "passing":
            return check_command(piece)
    for script, state, detail in graders:
        if state == "failing":
            return f"python {script}"
        if state == "cannot run":
            return f"bash setup.sh, then python {script}"
    return "python run_llama.py --option generate (README: running the assignment)"


def main() -> int:
    """Run the student checks; their conftest.py prints the summary at the end."""
    command = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-rN", "-p", "no:cacheprovider", STUDENT_CHECKS]
    return subprocess.run(command, cwd=REPO_ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
