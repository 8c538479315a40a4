"""Shared test setup: `tests/` on sys.path so tests can `from synth import SynthTrace`, and no
frame cache written beside the committed traces (tests of the cache turn it on themselves)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TRACEKIT_CACHE", "0")
