"""The package's shape: imports point down the layers with no circles, modules stay small,
`import mygpt2` exposes the public API, and the README's Python examples run as written."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mygpt2

PACKAGE = Path(mygpt2.__file__).parent
REPO = PACKAGE.parent

# Lower layers never import higher ones. Same-layer imports are fine (no circles, checked below).
LAYERS = {
    "base": ["errors", "fileio", "lock", "presets", "config", "runtime", "sampling_settings"],
    "domain": [
        "bpe",
        "split_pattern",
        "tokenizer_files",
        "tokenizer",
        "regex_tokenizer",
        "corpus",
        "prepare",
        "data",
        "loss",
        "hooks",
        "attention",
        "rmsnorm",
        "packing",
        "model",
        "dynamics",
        "generate",
        "hf",
        "evaluation",
        "inspect",
        "sae",
    ],
    "runs": [
        "checkpoint",
        "optim",
        "metrics",
        "guard",
        "run_setup",
        "compare",
        "sweep",
        "train",
        "sample",
        "serve",
        "sae_train",
    ],
    "commands": ["commands", "cli", "__init__"],
}
RANK = {module: i for i, layer in enumerate(LAYERS.values()) for module in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> set[str]:
    """Every mygpt2 module `path` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mygpt2")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mygpt2"):
            for alias in node.names:  # `from mygpt2 import train` names a module
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                found.add(sub if is_module else node.module)
    return found - {"mygpt2"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): package_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return RANK["commands"] if parts[1] == "commands" else RANK[parts[1]]


def test_every_module_has_a_layer():
    for module in import_graph():
        if module != "mygpt2":
            assert module.split(".")[1] in RANK, f"{module}: add it to a layer in LAYERS"


def test_imports_point_down_the_layers():
    wrong = [
        f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
        for a, targets in import_graph().items()
        if a != "mygpt2"
        for b in targets
        if layer_of(b) > layer_of(a)
    ]
    assert not wrong, "imports pointing up:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_over_about_500_lines():
    long = {
        str(p.relative_to(REPO)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 550
    }
    assert not long, f"split these modules: {long}"


def test_import_mygpt2_exposes_the_api_without_importing_torch():
    code = (
        "import sys, mygpt2; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
        "assert callable(mygpt2.generate) and mygpt2.GPT.__name__ == 'GPT'; "
        "print(sorted(set(mygpt2.__all__) - set(dir(mygpt2))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    for name in mygpt2.__all__:
        assert getattr(mygpt2, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mygpt2.nope  # noqa: B018


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_readme_python_examples_run_as_written(tmp_path, monkeypatch, shakespeare_path):
    """Every ```python block of the README, in order, in one namespace, in a fresh directory
    holding the corpus.txt the examples read (the start of Tiny Shakespeare)."""
    blocks = [b for b in readme_python_blocks() if "import mygpt2" in b or "from mygpt2" in b]
    assert len(blocks) >= 2
    text = Path(shakespeare_path).read_text(encoding="utf-8")[:200_000]
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}")


def test_api_functions_keep_their_names_after_their_modules_are_imported():
    import mygpt2.generate  # a submodule import used to rebind the package name
    import mygpt2.train

    assert callable(mygpt2.generate) and mygpt2.generate.__module__ == "mygpt2.generate"
    assert callable(mygpt2.train) and mygpt2.train.__module__ == "mygpt2.train"
