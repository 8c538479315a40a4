"""A run's source code: where its files are (`roots`: the run's snapshot of the code first),
resolving a profiler frame's file and parsing it once (`files`, `parse`), the statement behind
an op (`narrow`, `containers`) and the line of a call (`calls`). The one home for reading
source, used by the linker, the detectors and the comparison.
"""

from tracekit.source.calls import call_in_with, call_line, def_line_of, function_found
from tracekit.source.files import SourceFiles, SourcePath, on_disk
from tracekit.source.narrow import CALL_PREFIX, KERNEL_PREFIX, Narrowed, SourceIndex, choose_line
from tracekit.source.parse import call_name
from tracekit.source.roots import (
    SOURCE_SNAPSHOT_DIR,
    snapshot_location,
    source_roots,
    source_snapshot,
)

__all__ = ["CALL_PREFIX", "KERNEL_PREFIX", "SOURCE_SNAPSHOT_DIR", "Narrowed", "SourceFiles",
           "SourceIndex", "SourcePath", "call_in_with", "call_line", "call_name", "choose_line",
           "def_line_of", "function_found", "on_disk", "snapshot_location", "source_roots",
           "source_snapshot"]
