"""Shared test setup: `tests/` on sys.path so tests can `from synth import SynthTrace`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
