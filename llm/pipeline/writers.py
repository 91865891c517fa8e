"""Atomic JSONL writer: files are written as ``<name>.partial`` and renamed when the task's
writer closes, so a killed task never leaves a file a later stage could take for complete
(readers glob ``*.jsonl.gz``; the rerun of the task overwrites its partial file)."""

from __future__ import annotations

from datatrove.pipeline.writers.jsonl import JsonlWriter

PARTIAL = ".partial"


class AtomicJsonlWriter(JsonlWriter):
    name = "writer"

    def __init__(self, output_folder, output_filename: str = "${rank}.jsonl.gz", **kw):
        super().__init__(output_folder, output_filename=output_filename, compression="gzip", **kw)
        self._written: set[str] = set()

    def _get_output_filename(self, document, rank=0, **kwargs) -> str:
        name = super()._get_output_filename(document, rank, **kwargs)
        if rank == "XXXXX":  # datatrove's stat label for the file, not a real file
            return name
        self._written.add(name)
        return name + PARTIAL

    def close(self):
        super().close()
        for name in sorted(self._written):
            if self.output_folder.exists(name + PARTIAL):
                self.output_folder.mv(name + PARTIAL, name)
        self._written.clear()
