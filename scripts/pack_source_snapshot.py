"""Pack a run's source snapshot directory into one archive that tracekit reads directly.

    python scripts/pack_source_snapshot.py traces/source-8063985     # -> traces/source-8063985.zip

The archive holds the same tree (trainer/*.py), with fixed timestamps so packing the same files
gives the same bytes. Point a manifest's `source_dir` at the archive (`../source-8063985.zip`)
and remove the directory: old copies of the code then stay data, not code that linters,
duplicate finders and readers take for the project's.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def pack(directory: Path) -> Path:
    target = directory.with_name(directory.name + ".zip")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return target


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    for name in sys.argv[1:]:
        print(pack(Path(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
