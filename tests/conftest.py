"""Shared test setup: no frame cache written beside the committed traces (tests of the cache
turn it on themselves). Helpers are imported as a package: `from tests.synth import SynthTrace`."""

import os

os.environ.setdefault("TRACEKIT_CACHE", "0")
