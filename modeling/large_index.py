"""FAISS indexes for corpora whose embeddings do not fit in memory: embeddings streamed to a `.npy` file, the index
trained on a sample and filled chunk by chunk, and an IVF index's inverted lists kept in a file beside the index.

Memory while building is one chunk of embeddings plus the index's codes (or, on disk, one chunk's codes): the
embeddings are read with file reads, not through a memory mapping, because pages read through a mapping stay in the
process's resident set until it is unmapped, so streaming 10 GB through one would show 10 GB resident. The
on-disk layout is FAISS's own (`faiss/contrib/ondisk.py`): every chunk becomes an IVF shard with the trained,
empty index, the shards' lists are merged into one `.ivfdata` file (`faiss.OnDiskInvertedLists`), and the index
file keeps the quantizer and codebooks and names the data file. Read with `faiss.IO_FLAG_ONDISK_SAME_DIR`, the data
file is found in the index file's folder and memory-mapped, so a searching process holds only the pages of the
lists it probes, which the kernel may drop again (file-backed, clean).

faiss is imported where it is used, so a model folder that imports this module loads without it.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

def optional_import(module: str, package: str):
    """`module` (optional: only the document index needs it), or an ImportError naming the pip package."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"The document index needs {module}: pip install {package}") from None


DEFAULT_CHUNK_SIZE = 100_000  # rows added at a time: 100 MB of float32 at d = 256
# FAISS's k-means reads at most 256 points per centroid (a PQ sub-quantizer has 256 centroids); a larger training
# sample would be subsampled by FAISS itself.
POINTS_PER_CENTROID = 256


def default_train_size(index) -> int:
    """How many vectors `index` (untrained) is trained on unless told: what FAISS's k-means would read at most,
    256 per IVF list and never fewer than one PQ sub-quantizer's 256 x 256."""
    faiss = optional_import("faiss", "faiss-cpu")
    try:
        n_lists = faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an IVF index
        n_lists = 0
    return max(POINTS_PER_CENTROID * n_lists, POINTS_PER_CENTROID ** 2)


class EmbeddingWriter:
    """Appends float32 rows to a `.npy` file, so a corpus is embedded batch by batch without holding its embeddings.

    The header is written first with 0 rows and rewritten on `close` with the count: numpy pads `.npy` headers so
    that the first axis can grow to 21 digits in place, so the data never moves.
    """

    def __init__(self, path: str | os.PathLike, dim: int):
        self.path, self.dim, self.rows = Path(path), dim, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._write_header()
        self._offset = self._file.tell()

    def _write_header(self) -> None:
        self._file.seek(0)
        np.lib.format.write_array_header_1_0(
            self._file, {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)})

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"expected rows of width {self.dim}, got shape {rows.shape}")
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> np.memmap:
        """Finish the file and return it memory-mapped, read-only."""
        self._write_header()
        if self._file.tell() != self._offset:
            raise RuntimeError(f"the .npy header of {self.path} changed length; its rows would be misread")
        self._file.close()
        return np.load(self.path, mmap_mode="r")


def _is_file_backed(embeddings: np.ndarray) -> bool:
    """True for a whole memory-mapped `.npy` (what `np.load(..., mmap_mode=...)` returns), not a slice of one, whose
    `offset` would not say where its rows start."""
    import mmap

    return (isinstance(embeddings, np.memmap) and isinstance(embeddings.base, mmap.mmap)
            and embeddings.flags.c_contiguous)


def read_rows(embeddings: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as an in-memory float32 array; a memory-mapped file is read with file reads (see the
    module's docstring)."""
    if not _is_file_backed(embeddings):
        return np.ascontiguousarray(embeddings[start:stop], dtype=np.float32)
    row_bytes = embeddings.shape[1] * embeddings.itemsize
    with open(embeddings.filename, "rb") as handle:
        handle.seek(embeddings.offset + start * row_bytes)
        rows = np.fromfile(handle, dtype=embeddings.dtype, count=(stop - start) * embeddings.shape[1])
    return rows.reshape(stop - start, embeddings.shape[1]).astype(np.float32, copy=False)


def iter_chunks(embeddings: np.ndarray, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of `embeddings`, `chunk_size` rows at a time, each read into memory."""
    for start in range(0, len(embeddings), chunk_size):
        yield start, read_rows(embeddings, start, min(start + chunk_size, len(embeddings)))


def training_sample(embeddings: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """`size` distinct rows drawn at random (seeded), read one by one from a file, in row order."""
    if size >= len(embeddings):
        return read_rows(embeddings, 0, len(embeddings))
    rows = np.sort(np.random.default_rng(seed).choice(len(embeddings), size, replace=False))
    if not _is_file_backed(embeddings):
        return np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    row_bytes = embeddings.shape[1] * embeddings.itemsize
    sample = np.empty((size, embeddings.shape[1]), np.float32)
    with open(embeddings.filename, "rb") as handle:
        fd = handle.fileno()
        for i, row in enumerate(rows):
            sample[i] = np.frombuffer(os.pread(fd, row_bytes, embeddings.offset + int(row) * row_bytes),
                                      dtype=embeddings.dtype)
    return sample


def build_faiss_index(embeddings: np.ndarray, factory: str = "Flat", train_size: int | None = None,
                      on_disk: str | os.PathLike | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      seed: int = 0):
    """An inner-product FAISS index (`factory` string) of `embeddings` (n, dim), an array or a memory-mapped `.npy`.

    An index that needs training is trained on `train_size` rows drawn at random with `seed` (default
    `default_train_size`; all rows when there are fewer). Vectors are added `chunk_size` rows at a time.
    `on_disk` (a file path; IVF indexes only) keeps the inverted lists in that file instead of memory.
    """
    faiss = optional_import("faiss", "faiss-cpu")
    index = faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(training_sample(embeddings, train_size or default_train_size(index), seed))
    if on_disk is not None:
        return fill_on_disk(index, embeddings, Path(on_disk), chunk_size)
    for _, rows in iter_chunks(embeddings, chunk_size):
        index.add(rows)
    return index


def fill_on_disk(index, embeddings: np.ndarray, ivfdata: Path, chunk_size: int):
    """`index` (trained, empty IVF) filled from `embeddings` with its inverted lists in `ivfdata`: one shard per
    chunk written to a scratch folder beside `ivfdata`, then merged as `faiss.contrib.ondisk.merge_ondisk` does."""
    faiss = optional_import("faiss", "faiss-cpu")
    merge_ondisk = optional_import("faiss.contrib.ondisk", "faiss-cpu").merge_ondisk

    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        raise ValueError("Only IVF indexes (a factory string starting with IVF) keep their lists on disk.") from None
    ivfdata.parent.mkdir(parents=True, exist_ok=True)
    ivfdata.unlink(missing_ok=True)  # OnDiskInvertedLists would otherwise write into the old file's pages
    with tempfile.TemporaryDirectory(dir=ivfdata.parent, prefix=".shards-") as scratch:
        shards = []
        for start, rows in iter_chunks(embeddings, chunk_size):
            shard = faiss.clone_index(index)
            shard.add_with_ids(rows, np.arange(start, start + len(rows), dtype=np.int64))
            shards.append(os.path.join(scratch, f"{len(shards)}.faiss"))
            faiss.write_index(shard, shards[-1])
            del shard
        merge_ondisk(index, shards, str(ivfdata))
    return index


def on_disk_lists(index):
    """The `faiss.OnDiskInvertedLists` of `index`, or None when its lists are in memory (or it has none)."""
    faiss = optional_import("faiss", "faiss-cpu")
    try:
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    except RuntimeError:
        return None
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def write_on_disk_index(index, index_path: Path, ivfdata_path: Path) -> None:
    """Write `index` to `index_path` with its inverted lists in `ivfdata_path` (copied there unless already there),
    the index naming the data file by its bare name, so the pair moves together and loads with
    `faiss.IO_FLAG_ONDISK_SAME_DIR` wherever the folder is (a Hub cache too)."""
    faiss = optional_import("faiss", "faiss-cpu")
    lists = on_disk_lists(index)
    source = Path(lists.filename)
    if source.resolve() != ivfdata_path.resolve():
        shutil.copyfile(source, ivfdata_path)
    lists.filename = ivfdata_path.name
    try:
        faiss.write_index(index, str(index_path))
    finally:
        lists.filename = str(source)


def read_index(index_path: str, on_disk: bool):
    """The index at `index_path`; `on_disk`: its inverted lists are memory-mapped, read-only, from the data file in
    the same folder."""
    faiss = optional_import("faiss", "faiss-cpu")
    if not on_disk:
        return faiss.read_index(index_path)
    return faiss.read_index(index_path, faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
