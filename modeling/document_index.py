"""The retriever's document index: documents in a `datasets.Dataset`, their chunks' embeddings in a FAISS index.

A document (a passage, a picture, or a picture with its article) is one row of the dataset; its id is its row. A
passage longer than the text tower's context is embedded as several chunks, each a vector of the FAISS index that
keeps its document's id (`chunk_document_ids`), and a search returns documents, each scored by its best chunk.

The documents (`text` and `image` per row) are saved as Parquet with images embedded, the index with
`faiss.write_index`, the chunks' document ids as a NumPy array, and the index's name and search parameters as JSON, so
nothing is pickled and a saved model folder carries the corpus it answers from. Embeddings are L2-normalised, so
inner product is cosine similarity: exact search (`"Flat"`) suits corpora up to ~100 k chunks on a CPU; larger ones
take a FAISS factory string such as `"IVF1024,Flat"` or `"HNSW32"` with `search_parameters` like `"nprobe=64"` or
`"efSearch=256"`. A corpus whose embeddings do not fit in memory is embedded to a `.npy` file and indexed from it
chunk by chunk, an IVF index's inverted lists in `documents.ivfdata` beside the index, memory-mapped when loaded
(`large_index`).

faiss and datasets are imported where they are used, so a model folder loads without them.
"""

import json
import logging
import os
from pathlib import Path

import numpy as np
from transformers.utils import cached_file

from .large_index import (DEFAULT_CHUNK_SIZE, build_faiss_index, on_disk_lists, optional_import, read_index,
                          write_on_disk_index)

logger = logging.getLogger(__name__)
DOCUMENTS_FILE = "documents.parquet"
INDEX_FILE = "documents.faiss"
CHUNKS_FILE = "document_chunks.npy"  # written only when some document has several chunks
INFO_FILE = "document_index.json"
IVFDATA_FILE = "documents.ivfdata"  # an on-disk index's inverted lists, named by the index file


def _documents_dataset(documents):
    """`documents` as a `datasets.Dataset` of `text` and `image`; a Dataset (a large corpus, memory-mapped Arrow)
    is kept as it is."""
    datasets = optional_import("datasets", "datasets")
    if isinstance(documents, datasets.Dataset):
        return documents.select_columns(["text", "image"])
    features = datasets.Features({"text": datasets.Value("string"), "image": datasets.Image()})
    return datasets.Dataset.from_dict({"text": [doc.get("text") for doc in documents],
                                       "image": [doc.get("image") for doc in documents]}, features=features)


class DocumentIndex:
    """Documents with a FAISS inner-product index over their chunks' embeddings.

    Row `i` of `dataset` is document id `i`, the id `search` returns; `chunk_document_ids[c]` is the document of
    FAISS vector `c` (None: one vector per document, in order).
    """

    def __init__(self, dataset, faiss_index, chunk_document_ids: np.ndarray | None = None, name: str = "corpus",
                 search_parameters: str | None = None):
        self.dataset, self.faiss_index, self.name = dataset, faiss_index, name
        self.chunk_document_ids = chunk_document_ids
        self.search_parameters = search_parameters
        if search_parameters:
            optional_import("faiss", "faiss-cpu").ParameterSpace().set_index_parameters(faiss_index, search_parameters)

    @classmethod
    def build(cls, documents, embeddings: np.ndarray, chunk_document_ids: np.ndarray | None = None,
              factory: str = "Flat", search_parameters: str | None = None, name: str = "corpus",
              train_size: int | None = None, on_disk: str | os.PathLike | None = None,
              chunk_size: int = DEFAULT_CHUNK_SIZE) -> "DocumentIndex":
        """Index `documents` (`{"text": str | None, "image": PIL.Image | None}` dicts, or a `datasets.Dataset` with
        those columns) by their chunks' `embeddings` (n_chunks, dim; an array or a memory-mapped `.npy`), chunk `c`
        belonging to document `chunk_document_ids[c]` (default: one chunk each).

        An index that needs training (IVF, PQ) is trained on `train_size` chunks drawn at random (default: as many
        as FAISS's k-means reads, 256 per list, so all of a small corpus); chunks are added `chunk_size` at a time.
        `on_disk` (a file path, IVF only) keeps the inverted lists in that file, memory-mapped.
        """
        optional_import("faiss", "faiss-cpu")
        index = build_faiss_index(embeddings, factory, train_size, on_disk, chunk_size)
        return cls(_documents_dataset(documents), index, cls._chunks(chunk_document_ids, len(documents)), name,
                   search_parameters)

    @staticmethod
    def _chunks(chunk_document_ids: np.ndarray | None, n_documents: int) -> np.ndarray | None:
        if chunk_document_ids is None or np.array_equal(chunk_document_ids, np.arange(n_documents)):
            return None
        return np.asarray(chunk_document_ids, dtype=np.int64)

    def add(self, documents: list[dict], embeddings: np.ndarray, chunk_document_ids: np.ndarray | None = None,
            name: str | None = None) -> None:
        """Append `documents` (ids from `len(self)` on) and their chunks' embeddings; `name` renames the corpus."""
        if on_disk_lists(self.faiss_index) is not None:
            raise ValueError("An index with its lists on disk is not extended in place: build it again "
                             "(DocumentIndex.build or build_document_index) with every document.")
        datasets = optional_import("datasets", "datasets")
        offset, n_chunks = len(self), self.faiss_index.ntotal
        chunks = np.arange(len(documents)) if chunk_document_ids is None else np.asarray(chunk_document_ids)
        old = np.arange(n_chunks) if self.chunk_document_ids is None else self.chunk_document_ids
        self.dataset = datasets.concatenate_datasets([self.dataset, _documents_dataset(documents)])
        self.faiss_index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
        self.chunk_document_ids = self._chunks(np.concatenate([old, chunks + offset]), len(self))
        self.name = name or self.name

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self) -> str:
        """What a search looks in, as predictions report it: `name (n documents)`."""
        return f"{self.name} ({len(self)} documents)"

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, document ids), each (n_queries, k), best first, a document scored by its best chunk; ids are -1
        where the corpus has fewer than k documents (or an approximate index found fewer)."""
        queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        k = min(k, len(self))
        if self.chunk_document_ids is None:
            return self.faiss_index.search(queries, k)
        n_chunks = self.faiss_index.ntotal
        depth = min(n_chunks, k * max(2, 2 * n_chunks // len(self)))
        while True:  # deeper until every query has k distinct documents (or every chunk was read)
            chunk_scores, chunk_ids = self.faiss_index.search(queries, depth)
            scores, ids = np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
            for row, (row_scores, row_chunks) in enumerate(zip(chunk_scores, chunk_ids)):
                documents = self.chunk_document_ids[row_chunks[row_chunks >= 0]]
                _, first = np.unique(documents, return_index=True)
                first = np.sort(first)[:k]  # best chunk of each document, best first
                scores[row, :len(first)], ids[row, :len(first)] = row_scores[first], documents[first]
            if (ids >= 0).all() or depth >= n_chunks:
                return scores, ids
            depth = min(n_chunks, depth * 4)

    def documents(self, ids) -> list[dict]:
        """The documents with these ids, as `{"text", "image"}` dicts. Negative ids (FAISS's -1: fewer documents
        found than asked) are skipped and logged."""
        ids = [int(i) for i in ids]
        if any(i < 0 for i in ids):
            logger.warning("%d of %d document ids are -1 (the index found fewer documents than asked); they are "
                           "skipped.", sum(i < 0 for i in ids), len(ids))
        return [self.dataset[i] for i in ids if i >= 0]

    def all_documents(self) -> list[dict]:
        return [self.dataset[i] for i in range(len(self))]

    def save(self, folder: str | os.PathLike) -> None:
        faiss = optional_import("faiss", "faiss-cpu")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if on_disk_lists(self.faiss_index) is None:
            faiss.write_index(self.faiss_index, str(folder / INDEX_FILE))
            (folder / IVFDATA_FILE).unlink(missing_ok=True)
        else:
            write_on_disk_index(self.faiss_index, folder / INDEX_FILE, folder / IVFDATA_FILE)
        self.dataset.to_parquet(folder / DOCUMENTS_FILE)
        (folder / CHUNKS_FILE).unlink(missing_ok=True)
        if self.chunk_document_ids is not None:
            np.save(folder / CHUNKS_FILE, self.chunk_document_ids, allow_pickle=False)
        (folder / INFO_FILE).write_text(json.dumps({"name": self.name, "search_parameters": self.search_parameters}))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str = "", **hub_kwargs) -> "DocumentIndex | None":
        """The index saved in a local folder or Hub repository, or None if it has none. Folders saved before chunks
        and names existed (no `document_chunks.npy`, no `document_index.json`) read as one chunk per document.
        An index saved with its lists on disk (`documents.ivfdata`) has them memory-mapped, read-only."""
        names = (DOCUMENTS_FILE, INDEX_FILE, CHUNKS_FILE, INFO_FILE, IVFDATA_FILE)
        found = {name: cached_file(str(path), name, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                                   **hub_kwargs) for name in names}
        if found[DOCUMENTS_FILE] is None or found[INDEX_FILE] is None:
            return None
        datasets = optional_import("datasets", "datasets")
        optional_import("faiss", "faiss-cpu")
        info = json.loads(Path(found[INFO_FILE]).read_text()) if found[INFO_FILE] else {}
        chunks = np.load(found[CHUNKS_FILE], allow_pickle=False) if found[CHUNKS_FILE] else None
        return cls(datasets.Dataset.from_parquet(found[DOCUMENTS_FILE]),
                   read_index(found[INDEX_FILE], on_disk=found[IVFDATA_FILE] is not None), chunks,
                   info.get("name", "corpus"), info.get("search_parameters"))
