"""A corpus bigger than memory: embeddings streamed to a `.npy` file, a FAISS index trained on a sample and filled
from that file chunk by chunk, an IVF index's inverted lists kept on disk, saved with the model and read back
memory-mapped (in a process without this project too)."""

import json
import shutil

import datasets
import numpy as np
import pytest
import torch

from modeling import DocumentIndex, MultimodalRetrieverModel
from modeling.large_index import EmbeddingWriter, build_faiss_index, on_disk_lists, training_sample
from tests.conftest import hub_user_python
from tests import test_retriever_model
from tests.test_retriever_model import LONG_PASSAGE
from train.retrieval.models import build_tiny_retriever

task = test_retriever_model.task  # the retriever tests' small bundled task (a module-scoped fixture)
N, DIM, FACTORY = 3000, 16, "IVF16,PQ8np"  # np: no polysemous training, seconds of it per PQ


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> tuple[np.ndarray, np.memmap]:
    """Clustered unit vectors (like embeddings), in memory and as a memory-mapped `.npy` written in pieces."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, DIM))
    vectors = centres[rng.integers(0, 30, N)] + 0.3 * rng.standard_normal((N, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    writer = EmbeddingWriter(tmp_path_factory.mktemp("embeddings") / "embeddings.npy", DIM)
    for start in range(0, N, 700):
        writer.write(vectors[start:start + 700])
    return vectors, writer.close()


def recall_at_10(index, queries: np.ndarray, vectors: np.ndarray) -> float:
    truth = np.argsort(-queries @ vectors.T, axis=1)[:, :10]
    found = index.search(queries, 10)[1]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


def test_streamed_embeddings_equal_the_in_memory_ones(task, tmp_path):
    """A Dataset corpus (how a big one is held) embedded to disk: the same chunks, ids and numbers as in memory."""
    model, processor = build_tiny_retriever(task, seed=0)
    documents = [{"text": LONG_PASSAGE, "image": None}, *task.corpus[:9]]
    in_memory, ids = model.eval().embed_documents(documents, processor, batch_size=3)
    corpus = datasets.Dataset.from_list(documents)
    on_disk, disk_ids = model.embed_documents_to_disk(corpus, processor, tmp_path / "e.npy", batch_size=3)
    assert isinstance(on_disk, np.memmap) and on_disk.shape == in_memory.shape and len(in_memory) > len(documents)
    np.testing.assert_allclose(on_disk, in_memory, atol=1e-6)
    assert np.array_equal(disk_ids, ids)
    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), on_disk)  # an ordinary .npy file


def test_an_index_filled_from_a_memmap_in_chunks_is_the_one_built_at_once(vectors):
    """Chunked adding from the file changes nothing: the same sample-trained index as from the array in one go;
    and a sample of a third of the vectors trains an index nearly as good as all of them (recall against exact)."""
    array, memmap = vectors
    assert np.array_equal(training_sample(memmap, 1000, seed=3), training_sample(array, 1000, seed=3))
    chunked = build_faiss_index(memmap, FACTORY, train_size=1000, chunk_size=700)
    at_once = build_faiss_index(array, FACTORY, train_size=1000, chunk_size=N)
    all_trained = build_faiss_index(array, FACTORY, train_size=N)
    queries = array[::15]
    for index in (chunked, at_once, all_trained):
        index.nprobe = 4
    assert chunked.ntotal == N
    assert np.array_equal(chunked.search(queries, 10)[1], at_once.search(queries, 10)[1])
    sampled, full = recall_at_10(chunked, queries, array), recall_at_10(all_trained, queries, array)
    assert sampled > 0.5 and sampled >= 0.9 * full, (sampled, full)


def test_an_on_disk_index_saved_in_a_folder_loads_memory_mapped_in_a_clean_process(vectors, tmp_path):
    """The folder alone (the build's files deleted) holds the index and its lists; a process without this project
    reads it with faiss's own flags and finds what the building process found."""
    array, memmap = vectors
    documents = [{"text": f"document {i}", "image": None} for i in range(N)]
    index = DocumentIndex.build(documents, memmap, factory=FACTORY, search_parameters="nprobe=4", train_size=1000,
                                on_disk=tmp_path / "build" / "lists.ivfdata", chunk_size=700)
    assert on_disk_lists(index.faiss_index) is not None
    queries = array[::15]
    scores, ids = index.search(queries, 10)
    assert recall_at_10(index.faiss_index, queries, array) > 0.5
    folder = tmp_path / "model"
    index.save(folder)
    del index
    shutil.rmtree(tmp_path / "build")
    np.save(tmp_path / "queries.npy", queries)
    assert (folder / "documents.ivfdata").stat().st_size >= N * (8 + 8)  # PQ8 codes and int64 ids
    assert (folder / "documents.faiss").stat().st_size < (folder / "documents.ivfdata").stat().st_size

    script = f"""
        import json
        import faiss, numpy as np
        index = faiss.read_index({str(folder / "documents.faiss")!r},
                                 faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        assert isinstance(lists, faiss.OnDiskInvertedLists), type(lists)
        faiss.ParameterSpace().set_index_parameters(index, "nprobe=4")
        with open("found.json", "w") as handle:  # not stdout, which faiss's C++ messages share
            json.dump(index.search(np.load("queries.npy"), 10)[1].tolist(), handle)
    """
    result = hub_user_python(script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "found.json").read_text()) == ids.tolist()

    reloaded = DocumentIndex.from_pretrained(folder)
    assert on_disk_lists(reloaded.faiss_index) is not None
    reloaded_scores, reloaded_ids = reloaded.search(queries, 10)
    assert np.array_equal(reloaded_ids, ids) and np.allclose(reloaded_scores, scores)


def test_a_retriever_with_an_on_disk_index_saves_and_reloads_with_from_pretrained(task, tmp_path):
    """Probing all 4 lists makes the on-disk IVF index exhaustive: it finds what exact search finds, before and
    after saving and reloading."""
    model, processor = build_tiny_retriever(task, seed=0)
    model.eval()
    queries = model.embed_queries([e.question for e in task.examples[:6]], [e.image for e in task.examples[:6]],
                                  processor)
    exact_ids = model.build_document_index(task.corpus, processor).search(queries, 5)[1]
    corpus = datasets.Dataset.from_list(task.corpus)
    model.build_document_index(corpus, processor, factory="IVF4,Flat", search_parameters="nprobe=4", name="big",
                               embeddings_path=tmp_path / "build" / "embeddings.npy",
                               on_disk=tmp_path / "build" / "lists.ivfdata", chunk_size=16)
    scores, ids = model.retrieve(queries, k=5)
    assert np.array_equal(ids.numpy(), exact_ids)
    model.save_pretrained(tmp_path / "model")
    model.set_document_index(None)
    shutil.rmtree(tmp_path / "build")

    loaded = MultimodalRetrieverModel.from_pretrained(tmp_path / "model").eval()
    loaded_scores, loaded_ids = loaded.retrieve(queries, k=5)
    assert torch.equal(loaded_ids, ids) and torch.allclose(loaded_scores, scores)
    assert on_disk_lists(loaded.document_index.faiss_index) is not None
    assert loaded.document_index.describe() == f"big ({len(task.corpus)} documents)"
    assert loaded.document_index.documents([ids[0, 0]])[0]["text"] == task.corpus[int(ids[0, 0])]["text"]
    with pytest.raises(ValueError, match="build it again"):
        loaded.document_index.add([{"text": "one more", "image": None}], np.zeros((1, 64), np.float32))


def test_only_ivf_indexes_keep_their_lists_on_disk(vectors, tmp_path):
    with pytest.raises(ValueError, match="Only IVF"):
        build_faiss_index(vectors[0], "HNSW8", on_disk=tmp_path / "lists.ivfdata")
