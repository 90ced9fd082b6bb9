"""The README's ">>>" examples run as written (a rule of one's own, "Choosing λ")."""
from __future__ import annotations

import doctest
from pathlib import Path


def test_readme_examples() -> None:
    from decaylab.optim import RULES

    saved = dict(RULES)  # the README registers a rule of its own: other tests list RULES
    try:
        readme = Path(__file__).resolve().parents[1] / "README.md"
        result = doctest.testfile(str(readme), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    finally:
        RULES.clear()
        RULES.update(saved)
    assert result.attempted >= 12 and result.failed == 0
