"""``python -m decaylab.cli COMMAND ...``: the ``decaylab`` command (what ``torchrun -m decaylab.cli train`` runs)."""
import sys

from . import main

sys.exit(main())
