"""Regenerate every reference run's findings.json (traces/*/findings.json) with the current code
into a temporary directory and compare the bytes with the committed file.

    python3 scripts/check_reference_findings.py          # exit 1 on any difference

The committed files are what `cli.py profile` wrote (`write_findings`), so the same call makes
the new ones. The traces are parsed afresh (frame cache off) unless TRACEKIT_CACHE is set.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
os.environ.setdefault("TRACEKIT_CACHE", "0")  # parse the traces afresh

from tracekit.pipeline import analyze_run, write_findings  # noqa: E402


def main() -> int:
    runs = sorted(p.parent for p in (REPO / "traces").glob("*/findings.json"))
    failed = []
    with tempfile.TemporaryDirectory(prefix="reference-findings-") as tmp:
        for run_dir in runs:
            _, findings = analyze_run(run_dir, progress=False)
            fresh = write_findings(findings, Path(tmp) / f"{run_dir.name}.json")
            same = fresh.read_bytes() == (run_dir / "findings.json").read_bytes()
            print(f"{'same' if same else 'DIFFERENT'}  {run_dir.name}")
            if not same:
                failed.append(run_dir.name)
    print(f"{len(runs) - len(failed)} of {len(runs)} reference findings.json byte-identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
