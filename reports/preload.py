"""What a report's workers need loaded, imported once by the fork server they are forked from
(`parity.lockstep.parallel`): the experiment, and matplotlib for the plots they draw. A bogus MPLBACKEND is set aside
here without a word: the report's own process draws too (`reports.command.run`), and its note is the one printed."""

from __future__ import annotations

import parity.lockstep.preload  # noqa: F401  (NumPy, PyTorch, scratch, the reference, the experiment)
from reports.plots import import_matplotlib

import_matplotlib(note=False)
