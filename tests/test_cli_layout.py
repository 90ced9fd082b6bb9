"""The command line is a layer on top: no library module imports ``decaylab.cli``, every command is one
module of it, and a command that only reads a store runs without torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import decaylab
from decaylab.cli import COMMANDS, build_parser

PACKAGE = Path(decaylab.__file__).parent


def imported_names(path: Path) -> list[str]:
    """Every module name ``path`` imports, relative imports resolved against its package."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]  # `from decaylab import cli`
    return names


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.is_relative_to(PACKAGE / "cli"):
            continue
        bad = [name for name in imported_names(path) if name == "decaylab.cli" or name.startswith("decaylab.cli.")]
        if bad:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {sorted(set(bad))}")
    assert not offenders, "library modules import the CLI:\n" + "\n".join(offenders)


def test_the_check_sees_relative_imports(tmp_path):
    # the test above would pass vacuously if it missed `from ..cli import x` in a subpackage
    names = imported_names(PACKAGE / "cli" / "sweep.py")
    assert "decaylab.cli._args" in names and "decaylab.store" in names


def test_every_command_is_one_module():
    modules = {p.stem for p in (PACKAGE / "cli").glob("*.py")} - {"__init__", "__main__", "_args"}
    assert modules == set(COMMANDS)
    choices = build_parser()._subparsers._group_actions[0].choices
    assert list(choices) == list(COMMANDS)


def test_status_needs_no_torch(tmp_path):
    from decaylab.store import Store

    store = Store(tmp_path / "runs.sqlite")
    store.register("s", "spec", [("A", {"k": 1})], key=lambda c: str(c["k"]))
    store.close()
    code = ("import sys; from decaylab.cli import main; status = main(['status', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'decaylab status imported torch'; sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs.sqlite")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "A" in done.stdout
