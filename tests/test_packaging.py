"""The files the package reads at run time ship with it: every package-data entry names files that exist."""
from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_package_data_entries_match_files():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert data
    for package, patterns in data.items():
        folder = ROOT.joinpath(*package.split("."))
        assert (folder / "__init__.py").is_file(), f"{package} is not a package"
        for pattern in patterns:
            assert list(folder.glob(pattern)), f"{package}: {pattern} matches no file"


def test_the_native_source_is_declared():
    """The C step is built from its source at first use: a wheel without it has no native executor."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    sources = [ROOT.joinpath(*pkg.split(".")) / p for pkg, pats in data.items() for p in pats if p.endswith(".c")]
    from decaylab.optim.executors.native import build

    assert build.SOURCE in sources
