"""One JSON line per explained image, appended and flushed batch by batch; the summary is built from them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORDS_NAME = "records.jsonl"
SUMMARY_NAME = "summary.json"


class RecordWriter:
    """Appends records to ``records.jsonl``; each batch is written with one ``write`` and flushed."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / RECORDS_NAME
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        if records:
            self._file.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete records in ``path``; a last line cut off mid-write (no newline) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            records.append(json.loads(line))
    return records


def write_summary(output_dir: Path, run: dict[str, Any]) -> Path:
    """``summary.json``: the run's settings and every record of ``records.jsonl``."""
    records = read_records(output_dir / RECORDS_NAME)
    summary = {**run, "images": len(records), "errors": sum("error" in r for r in records), "records": records}
    path = output_dir / SUMMARY_NAME
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
