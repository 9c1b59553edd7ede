"""The progress record of `train.generate_dataset`: CSV files that survive SIGKILL, one per process.

One process appends to `data.csv` itself. Under `accelerate launch --num_processes N` (N > 1), process i appends
to `shards/data-{i}-of-{N}.csv` only, so no two processes ever write one file; when all are done the main process
merges the shards into `data.csv` in the order one process would have written them (image order, then question
order) and removes them. Every process reads every record on start, so a launch re-run after any process was
killed (or with another N) asks only what is missing.

Rows are appended after each batch with flush + fsync, so at most the batch in flight is lost; on start a file's
record torn by a kill mid-write is dropped and the file is rewritten cleanly (atomically).
"""

import csv
import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from train.common.cli import InvalidInput
from train.common.vqa_data import PAIR_COLUMNS

Row = tuple[str, str, str]  # (image path as written in the CSV, question, answer)


def csv_text(records: Iterable[Iterable[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(records)
    return buffer.getvalue()


def append_rows(handle, rows: list[Row]) -> None:
    """Append and make durable: after this returns, a SIGKILL cannot lose these rows."""
    handle.write(csv_text(rows))
    handle.flush()
    os.fsync(handle.fileno())


def read_rows(path: Path, clean: bool = False) -> list[Row]:
    """The finished rows of one progress file (none if it does not exist yet); with `clean`, (re)write it with its
    header and without a torn last record.

    Only `csv.writer` writes these files, so a complete last record re-serialises to exactly the bytes that end
    the file; one that does not was cut by a kill mid-write (possibly inside a multi-line answer) and is dropped.
    """
    data = path.read_bytes() if path.exists() else b""
    records = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline="")))
    if records and not data.endswith(csv_text(records[-1:]).encode()):
        print(f"warning: {path}: dropped a torn last line (left by a run killed mid-write)", file=sys.stderr)
        records.pop()
    if records and tuple(records[0]) != PAIR_COLUMNS:
        raise InvalidInput(f"{path}, row 0: header is {','.join(records[0])!r}, expected {','.join(PAIR_COLUMNS)!r}")
    rows = [tuple(row) for row in records[1:]]
    for number, row in enumerate(rows, start=1):
        if len(row) != len(PAIR_COLUMNS):
            raise InvalidInput(f"{path}, row {number}: expected {len(PAIR_COLUMNS)} columns, found {len(row)}")
    if clean:
        write_atomically(path, rows)
    return rows


def write_atomically(path: Path, rows: list[Row]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        handle.write(csv_text([PAIR_COLUMNS, *rows]))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # a kill leaves either the old file or the new one


def progress_file(output_dir: Path, process_index: int, num_processes: int) -> Path:
    """The file this process appends to: data.csv alone, or its own shard under a multi-process launch."""
    if num_processes == 1:
        return output_dir / "data.csv"
    return output_dir / "shards" / f"data-{process_index}-of-{num_processes}.csv"


def shard_files(output_dir: Path) -> list[Path]:
    return sorted((output_dir / "shards").glob("data-*-of-*.csv"))


def finished_pairs(output_dir: Path, own_file: Path) -> set[tuple[str, str]]:
    """(image, question) of every row any process has written; the caller's own file is cleaned on the way."""
    rows = read_rows(own_file, clean=True)
    for path in [output_dir / "data.csv", *shard_files(output_dir)]:
        if path != own_file:
            rows += read_rows(path)
    return {(image, question) for image, question, _ in rows}


def merge_shards(output_dir: Path, order: dict[tuple[str, str], int]) -> None:
    """Fold every shard into data.csv, rows ordered as one process writes them (`order` of each (image, question);
    rows of pairs not asked this time keep their place at the end), then remove the shards."""
    shards = shard_files(output_dir)
    if not shards:
        return
    rows = read_rows(output_dir / "data.csv") + [row for path in shards for row in read_rows(path)]
    unknown = len(order)
    rows.sort(key=lambda row: order.get((row[0], row[1]), unknown))
    write_atomically(output_dir / "data.csv", rows)
    for path in shards:
        path.unlink()
