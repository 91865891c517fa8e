"""Stage outputs: an atomic JSONL writer and the reader of what it wrote.

Files are written as ``<name>.partial`` and renamed when the task's writer closes, so a killed
task never leaves a file a later stage could take for complete (readers glob ``*.jsonl.gz``;
the rerun of the task overwrites its partial file)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

from datatrove.io import get_datafolder
from datatrove.pipeline.writers.jsonl import JsonlWriter

PARTIAL = ".partial"


class AtomicJsonlWriter(JsonlWriter):
    name = "writer"

    def __init__(self, output_folder, output_filename: str = "${rank}.jsonl.gz", **kw):
        super().__init__(output_folder, output_filename=output_filename, compression="gzip", **kw)
        self._written: set[str] = set()

    def _get_output_file_with_retry(self, output_filename: str):
        self._written.add(output_filename)
        return super()._get_output_file_with_retry(output_filename + PARTIAL)

    def close(self):
        super().close()
        for name in sorted(self._written):
            if self.output_folder.exists(name + PARTIAL):
                self.output_folder.mv(name + PARTIAL, name)
        self._written.clear()


def read_jsonl_gz(folder) -> Iterator[dict]:
    """The records ``AtomicJsonlWriter`` wrote to ``folder`` (complete files only, in name order)."""
    df = get_datafolder(str(folder))
    if not df.exists(""):
        return
    for path in sorted(df.list_files(glob_pattern="*.jsonl.gz")):
        with df.open(path, "rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)
