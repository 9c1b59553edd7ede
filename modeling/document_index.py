"""The retriever's document index: documents in a `datasets.Dataset`, their embeddings in a FAISS index.

The documents (`text` or `image` per row) are saved as Parquet with images embedded, and the index with
`faiss.write_index` (through `datasets`' `save_faiss_index`), so nothing is pickled and a saved model folder
carries the corpus it answers from. Embeddings are L2-normalised, so inner product is cosine similarity: exact
search (`"Flat"`) suits corpora up to ~100 k documents on a CPU; larger ones take a FAISS factory string such as
`"IVF1024,Flat"` or `"HNSW32"` with `search_parameters` like `"nprobe=64"` or `"efSearch=256"`.

faiss and datasets are imported where they are used, so a model folder loads without them.
"""

import logging
import os
from pathlib import Path

import numpy as np
from transformers.utils import cached_file

logger = logging.getLogger(__name__)
INDEX_NAME = "embeddings"
DOCUMENTS_FILE = "documents.parquet"
INDEX_FILE = "documents.faiss"


def _import(module: str, package: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"The document index needs {module}: pip install {package}") from None


class DocumentIndex:
    """Text and image documents with a FAISS inner-product index over their embeddings.

    Row `i` of `dataset` is document id `i`, the id `search` returns.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    @classmethod
    def build(cls, documents: list[dict], embeddings: np.ndarray, factory: str = "Flat",
              search_parameters: str | None = None) -> "DocumentIndex":
        """Index `documents` (`{"text": str | None, "image": PIL.Image | None}`) by `embeddings` (n_docs, dim)."""
        faiss = _import("faiss", "faiss-cpu")
        datasets = _import("datasets", "datasets")
        features = datasets.Features({"text": datasets.Value("string"), "image": datasets.Image()})
        dataset = datasets.Dataset.from_dict(
            {"text": [doc.get("text") for doc in documents], "image": [doc.get("image") for doc in documents]},
            features=features)
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        needs_training = not faiss.index_factory(embeddings.shape[1], factory, faiss.METRIC_INNER_PRODUCT).is_trained
        dataset.add_faiss_index_from_external_arrays(
            embeddings, INDEX_NAME, string_factory=factory, metric_type=faiss.METRIC_INNER_PRODUCT,
            train_size=len(embeddings) if needs_training else None)
        if search_parameters:
            faiss.ParameterSpace().set_index_parameters(cls(dataset).faiss_index, search_parameters)
        return cls(dataset)

    @property
    def faiss_index(self):
        return self.dataset.get_index(INDEX_NAME).faiss_index

    def __len__(self) -> int:
        return len(self.dataset)

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k), best first; ids are -1 where the corpus has fewer than k documents."""
        queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        result = self.dataset.search_batch(INDEX_NAME, queries, k=min(k, len(self)))
        return np.asarray(result.total_scores), np.asarray(result.total_indices)

    def documents(self, ids) -> list[dict]:
        """The documents with these ids, as `{"text", "image"}` dicts. Negative ids (FAISS's -1: fewer documents
        found than asked) are skipped and logged."""
        ids = [int(i) for i in ids]
        if any(i < 0 for i in ids):
            logger.warning("%d of %d document ids are -1 (the index found fewer documents than asked); they are "
                           "skipped.", sum(i < 0 for i in ids), len(ids))
        return [self.dataset[i] for i in ids if i >= 0]

    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.dataset.save_faiss_index(INDEX_NAME, folder / INDEX_FILE)
        self.dataset.to_parquet(folder / DOCUMENTS_FILE)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str = "", **hub_kwargs) -> "DocumentIndex | None":
        """The index saved in a local folder or Hub repository, or None if it has none."""
        files = [cached_file(str(path), name, subfolder=subfolder, _raise_exceptions_for_missing_entries=False,
                             **hub_kwargs) for name in (DOCUMENTS_FILE, INDEX_FILE)]
        if None in files:
            return None
        datasets = _import("datasets", "datasets")
        _import("faiss", "faiss-cpu")
        dataset = datasets.Dataset.from_parquet(files[0])
        dataset.load_faiss_index(INDEX_NAME, files[1])
        return cls(dataset)
