"""A run's source snapshot is read the same from a directory and from its archive."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tracekit.source import SourceIndex, on_disk, source_roots, source_snapshot

MODEL = '''\
def forward(bank, x):
    w = bank[x]
    return w @ w
'''


def snapshot_pair(tmp_path: Path) -> tuple[Path, Path]:
    """The same code as <run>/source/ and as an archive beside the run."""
    run = tmp_path / "run"
    (run / "source" / "pkg").mkdir(parents=True)
    (run / "source" / "pkg" / "model.py").write_text(MODEL)
    archive = tmp_path / "source-abc.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pkg/model.py", MODEL)
    return run, archive


def test_an_archive_resolves_and_narrows_like_its_directory(tmp_path: Path) -> None:
    run, archive = snapshot_pair(tmp_path)
    answers = []
    for manifest in (None, {"source_dir": "../source-abc.zip"}):
        roots = source_roots(run, manifest)
        index = SourceIndex(roots=roots)
        path = index.resolve("pkg/model.py")
        assert path is not None and path.read_text() == MODEL
        answers.append((index.narrow("pkg/model.py", 1, "forward", "aten::select", 0, 1),
                        index.narrow("pkg/model.py", 1, "forward", "aten::mm", 0, 1)))
    assert answers[0] == answers[1]
    assert [a.line for a in answers[1]] == [2, 3]


def test_the_snapshot_of_a_run_reads_from_the_archive(tmp_path: Path) -> None:
    run, archive = snapshot_pair(tmp_path)
    snapshot = source_snapshot(run, {"source_dir": "../source-abc.zip"})
    assert snapshot is not None and (snapshot / "pkg" / "model.py").read_text() == MODEL
    assert source_roots(run, {"source_dir": "../source-abc.zip"})[0] == archive.resolve()
    member = SourceIndex(roots=(archive,)).resolve("pkg/model.py")
    assert on_disk(member) == archive.resolve() / "pkg" / "model.py"
