"""The multimodal retriever: one embedding space for queries and documents (text, image, image with text), passages
longer than the text tower's context as chunks that keep their document's id, its ranking loss and training, its FAISS
document index (saved with the model, loaded on first use, rebuilt or extended for another corpus), and published
dual encoders (SigLIP, CLIP) taken as they are."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling import DocumentIndex, MultimodalRetrieverModel
from modeling.modeling_retriever import max_per_document, ranking_loss
from processing import MultimodalRetrieverProcessor
from tests.conftest import hub_user_python
from train.bundled_data.retrieval_vqa import write_retrieval_vqa
from train.common.tokenizer import build_byte_level_tokenizer
from train.retrieval.models import build_tiny_retriever, load_retriever
from train.retrieval.ranking import rank_documents, ranking_metrics
from train.retrieval.retriever_stage import train_retriever
from train.retrieval.task import load_retrieval_task

LONG_PASSAGE = " ".join(f"The digit {word} of the Kalomi catalogue is painted a deep and shining {colour}."
                        for word, colour in zip(("one", "two", "three", "four", "five", "six"),
                                                ("red", "blue", "green", "pink", "cyan", "orange")))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrieval_vqa")
    write_retrieval_vqa(folder, n_train_catalogues=8, n_val_catalogues=1, n_test_catalogues=2, n_train_archive=40,
                        n_val_archive=5, n_test_archive=10, n_distractor_catalogues=1, n_distractor_drawings=5)
    return load_retrieval_task(folder / "train.csv", folder / "corpus.jsonl")


@pytest.fixture
def tiny(task):
    model, processor = build_tiny_retriever(task, seed=0)
    return model.eval(), processor


def mixed_documents(task, n_text=3, n_image=2):
    texts = [doc for doc in task.corpus if doc["image"] is None][:n_text]
    images = [doc for doc in task.corpus if doc["image"] is not None][:n_image]
    return [texts[0], images[0], *texts[1:], *images[1:]]


def test_queries_and_text_and_image_documents_share_one_unit_sphere(task, tiny):
    model, processor = tiny
    examples = task.examples[:4]
    queries = model.embed_queries([e.question for e in examples], [e.image for e in examples], processor)
    documents, document_ids = model.embed_documents(mixed_documents(task), processor)
    assert queries.shape == (4, 64) and documents.shape == (5, 64) and document_ids.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([queries, documents]), axis=1), 1.0, rtol=1e-5)


def test_mixed_documents_come_back_in_document_order(task, tiny):
    model, processor = tiny
    documents = mixed_documents(task)
    mixed, _ = model.embed_documents(documents, processor)
    one_by_one = np.concatenate([model.embed_documents([doc], processor)[0] for doc in documents])
    np.testing.assert_allclose(mixed, one_by_one, atol=1e-5)


def test_query_fusion_starts_as_the_normalised_sum_and_skips_missing_images(task, tiny):
    model, processor = tiny
    example = task.examples[0]
    inputs = processor.process_queries([example.question, example.question], [example.image, None])
    with torch.no_grad():
        fused = model.encode_queries(**inputs)
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        image = model.encode_images(inputs["pixel_values"][:1])
    torch.testing.assert_close(fused[0], F.normalize(text[0] + image[0], dim=-1))
    torch.testing.assert_close(fused[1], text[1])


def test_a_picture_with_its_text_is_one_document_of_both(task, tiny):
    """An image+text document is embedded as one: at the start of training, the normalised sum of its picture's and
    its text's embeddings, neither of them alone."""
    model, processor = tiny
    picture = next(doc["image"] for doc in task.corpus if doc["image"] is not None)
    text = "The Kalomi lives in caves."
    with torch.no_grad():
        both, ids = model.embed_documents([{"text": text, "image": picture}], processor)
        alone = [model.embed_documents([document], processor)[0]
                 for document in ({"text": text, "image": None}, {"text": None, "image": picture})]
    assert ids.tolist() == [0]
    np.testing.assert_allclose(both[0], F.normalize(torch.tensor(alone[0][0] + alone[1][0]), dim=-1).numpy(),
                               atol=1e-5)


def test_a_passage_longer_than_the_text_tower_is_cut_into_overlapping_chunks_that_fit(task, tiny):
    _, processor = tiny
    chunks = processor.split_passage(LONG_PASSAGE)
    lengths = [len(ids) for ids in processor.tokenizer(chunks)["input_ids"]]
    assert len(chunks) >= 3 and max(lengths) <= processor.max_length
    assert set(" ".join(chunks).split()) == set(LONG_PASSAGE.split())  # nothing lost
    for first, second in zip(chunks, chunks[1:]):  # each chunk starts with the end of the one before
        assert first.split()[-1] in second.split()[:len(second.split()) // 2]
    assert processor.split_passage("A short one.") == ["A short one."]
    documents = processor.process_documents([{"text": "Short.", "image": None},
                                             {"text": LONG_PASSAGE, "image": task.corpus[-1]["image"]}])
    n = len(chunks)
    assert documents["chunk_document_ids"].tolist() == [0] + [1] * n
    assert documents["chunk_text_ids"].tolist() == list(range(n + 1))
    assert documents["chunk_image_ids"].tolist() == [-1] + [0] * n  # every chunk keeps its document's picture


def test_a_document_scores_as_its_best_chunk():
    chunk_logits = torch.tensor([[0.1, 0.9, 0.3, -0.2], [0.5, -1.0, 0.2, 0.4]])
    documents = torch.tensor([0, 0, 1, 2])
    torch.testing.assert_close(max_per_document(chunk_logits, documents),
                               torch.tensor([[0.9, 0.3, -0.2], [0.5, 0.2, 0.4]]))


def test_the_index_searches_chunks_and_returns_each_document_once_by_its_best_chunk():
    """Hand-made embeddings: document 0 has three chunks, the nearest three vectors to the query; a search for two
    documents still returns two different ones, each scored by its best chunk."""
    embeddings = np.array([[1.0, 0.0], [0.99, 0.14], [0.98, 0.2], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    documents = [{"text": f"document {i}", "image": None} for i in range(3)]
    index = DocumentIndex.build(documents, embeddings, np.array([0, 0, 0, 1, 2]))
    scores, ids = index.search(np.array([[1.0, 0.0]], dtype=np.float32), 2)
    assert ids.tolist() == [[0, 2]]
    np.testing.assert_allclose(scores, [[1.0, 0.6]], atol=1e-6)
    assert index.search(np.array([[1.0, 0.0]], dtype=np.float32), 5)[1].tolist() == [[0, 2, 1]]


def test_a_long_passage_is_found_by_its_last_chunk(task, tiny, tmp_path):
    """Retrieval counts documents, not chunks: the passage whose end repeats the query's text is found first, as one
    document, even though the text tower never sees that end together with its beginning; saved and reloaded, the
    index still maps chunks to it."""
    model, processor = tiny
    tail = "The digit six of the Kalomi catalogue is painted a deep and shining orange."
    corpus = [{"text": LONG_PASSAGE, "image": None}, *[doc for doc in task.corpus if doc["text"]][:20]]
    model.build_document_index(corpus, processor, name="catalogue")
    assert model.document_index.chunk_document_ids is not None  # several chunks for the long passage
    query = model.embed_queries([tail], None, processor)
    _, ids = model.retrieve(query, 3)
    assert ids[0, 0] == 0 and len(set(ids[0].tolist())) == 3
    model.save_pretrained(tmp_path)
    reloaded = MultimodalRetrieverModel.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded.retrieve(query, 3)[1], ids)
    assert reloaded.document_index.describe() == f"catalogue ({len(corpus)} documents)"


def test_infonce_is_cross_entropy_over_documents_and_sigmoid_is_siglips_pairwise_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([[True, False, False], [False, False, True]])
    torch.testing.assert_close(ranking_loss(logits, labels, "infonce"), F.cross_entropy(logits, torch.tensor([0, 2])))
    signs = labels.float() * 2 - 1
    torch.testing.assert_close(ranking_loss(logits, labels, "sigmoid"), -F.logsigmoid(signs * logits).sum() / 2)
    # Several relevant documents share the probability mass instead of competing for it.
    both = torch.tensor([[True, True, False]])
    torch.testing.assert_close(ranking_loss(logits[:1], both, "infonce"),
                               torch.logsumexp(logits[0], 0) - torch.logsumexp(logits[0, :2], 0))


def test_the_tiny_image_tower_normalises_each_image_by_itself(task, tiny):
    """No batch statistic: in training mode an image embeds the same alone as among other images."""
    model, processor = tiny
    model.train()
    images = [e.image for e in task.examples[:6] if e.image is not None]
    pixels = processor.process_queries(["q"] * len(images), images)["pixel_values"]
    with torch.no_grad():
        together = model.encode_images(pixels)
        alone = torch.cat([model.encode_images(pixels[i:i + 1]) for i in range(len(images))])
    model.eval()
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.image_model.modules())


def test_a_training_batch_of_chunked_and_pictured_documents_trains(task, tiny):
    model, processor = tiny
    model.train()
    example = task.examples[0]
    queries = processor.process_queries([example.question], [example.image])
    documents = processor.process_documents([{"text": LONG_PASSAGE, "image": None}, mixed_documents(task, 1, 1)[1],
                                             {"text": "The Kalomi eats fish.", "image": example.image}])
    output = model(**queries, documents=dict(documents), labels=torch.tensor([[True, False, False]]))
    output.loss.backward()
    assert output.logits_per_query.shape == (1, 3)
    assert model.image_projection.weight.grad is not None and model.document_fusion.gate.grad is not None


def test_ranking_improves_with_training(task, tmp_path):
    model, processor = build_tiny_retriever(task, seed=0)
    before = ranking_metrics(rank_documents(model.eval(), processor, task, 10), task)
    train_retriever(model, processor, task, str(tmp_path), epochs=10, batch_size=16, seed=0)
    after = ranking_metrics(rank_documents(model, processor, task, 10), task)
    assert before["retriever_mrr"] < 0.2
    assert after["retriever_mrr"] > before["retriever_mrr"] + 0.4
    assert after["retriever_recall_at_5"] > 0.7
    assert list((tmp_path / "checkpoints" / "retriever").glob("checkpoint-*/model.safetensors"))


def test_document_index_is_saved_with_the_model_and_read_on_first_use(task, tiny, tmp_path):
    model, processor = tiny
    model.build_document_index(task.corpus, processor)
    queries = model.embed_queries([e.question for e in task.examples[:5]], [e.image for e in task.examples[:5]],
                                  processor)
    scores, ids = model.retrieve(queries, k=3)
    model.save_pretrained(tmp_path)

    assert {"documents.faiss", "documents.parquet", "document_index.json"} <= {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".pkl", ".pickle", ".bin")]
    loaded = MultimodalRetrieverModel.from_pretrained(tmp_path).eval()
    assert loaded._document_index is None  # nothing read yet: loading needs neither faiss nor datasets
    loaded_scores, loaded_ids = loaded.retrieve(queries, k=3)
    assert torch.equal(loaded_ids, ids) and torch.allclose(loaded_scores, scores)
    assert loaded.document_index.documents([ids[0, 0]])[0]["text"] == task.corpus[int(ids[0, 0])]["text"]


def test_an_index_saved_before_chunks_and_names_still_loads(task, tiny, tmp_path):
    model, processor = tiny
    model.build_document_index(task.corpus, processor)
    model.save_pretrained(tmp_path)
    (tmp_path / "document_index.json").unlink()
    index = DocumentIndex.from_pretrained(tmp_path)
    assert index.chunk_document_ids is None and index.describe() == f"corpus ({len(task.corpus)} documents)"


def test_index_is_rebuilt_or_extended_for_another_corpus_without_changing_weights(task, tiny):
    model, processor = tiny
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.build_document_index(task.corpus, processor)
    new_corpus = [{"text": "A document nobody asked about.", "image": None}, task.corpus[7], task.corpus[3]]
    model.build_document_index(new_corpus, processor, name="new")
    assert len(model.document_index) == 3
    # Each document is its own nearest neighbour in the new index.
    _, ids = model.retrieve(model.embed_documents(new_corpus, processor)[0], k=1)
    assert ids[:, 0].tolist() == [0, 1, 2]

    added = [{"text": LONG_PASSAGE, "image": None}, {"text": None, "image": task.corpus[-1]["image"]}]
    model.add_to_document_index(added, processor, name="new + added")
    assert model.document_index.describe() == "new + added (5 documents)"
    _, ids = model.retrieve(model.embed_documents(added, processor)[0], k=1)
    assert set(ids[:, 0].tolist()) == {3, 4}  # the long passage's chunks all lead to document 3
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())


def test_large_corpora_take_an_approximate_faiss_index():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(400, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    documents = [{"text": f"document {i}", "image": None} for i in range(400)]
    exact = DocumentIndex.build(documents, embeddings)
    approximate = DocumentIndex.build(documents, embeddings, factory="IVF8,Flat", search_parameters="nprobe=8")
    assert "IVF" in type(approximate.faiss_index).__name__
    # Probing every list makes IVF exhaustive: the same neighbours as exact search.
    assert np.array_equal(approximate.search(embeddings[:20], 5)[1], exact.search(embeddings[:20], 5)[1])


def test_retrieving_without_an_index_says_how_to_build_one(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="build_document_index"):
        model.retrieve(np.zeros((1, 64), dtype=np.float32), k=1)


# Published dual encoders, as they are ---------------------------------------------------------------------------

def save_dual_encoder(kind: str, folder) -> tuple:
    """A tiny random SigLIP or CLIP with its processor, saved as the Hub holds them (tokenizer built locally)."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, SiglipConfig,
                              SiglipImageProcessor, SiglipModel, SiglipProcessor)

    tokenizer = build_byte_level_tokenizer(image_token=None)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    if kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = SiglipProcessor(SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer)
    else:  # CLIP projects both towers to projection_dim, here narrower than either tower
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                                  tokenizer)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def features(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_a_published_dual_encoder_is_the_retriever_as_it_is(kind, tmp_path):
    """Texts and images embed exactly as the dual encoder's own `get_text_features` / `get_image_features` do (no
    width surgery: CLIP's 24-wide projection is the shared space), with its logit scale; SigLIP's texts are padded to
    its full context as it was trained."""
    dual_encoder, published = save_dual_encoder(kind, tmp_path / kind)
    model, processor = load_retriever(str(tmp_path / kind))
    model.eval()
    assert model.config.dual_encoder_config.model_type == kind and model.config.projection_dim == (
        24 if kind == "clip" else 32)
    assert processor.pad_to_max_length == (kind == "siglip") and processor.max_length == 16
    texts = processor.process_queries(["a red seven", "the digit one"])
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    pixels = published.image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(texts["input_ids"], texts["attention_mask"]), F.normalize(
            features(dual_encoder.get_text_features(**texts)), dim=-1))
        torch.testing.assert_close(model.encode_images(pixels),
                                   F.normalize(features(dual_encoder.get_image_features(pixel_values=pixels)), dim=-1))
    assert model.logit_scale.item() == pytest.approx(dual_encoder.logit_scale.item())
    assert not [name for name, p in model.named_parameters() if p.is_meta]


HUB_USER_SCRIPT = """
import json, sys
from PIL import Image
from transformers import AutoModel, AutoProcessor
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
queries = model.embed_queries(["a red seven"], [Image.new("RGB", (20, 20), (200, 30, 30))], processor)
scores, ids = model.retrieve(queries, 2)
print(json.dumps({"classes": [type(model).__name__, type(model.dual_encoder).__name__],
                  "ids": ids.tolist(), "scores": scores.tolist(), "corpus": model.document_index.describe()}))
"""


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_a_dual_encoder_retriever_saves_and_reloads_in_a_hub_users_process(kind, tmp_path):
    save_dual_encoder(kind, tmp_path / kind)
    model, processor = load_retriever(str(tmp_path / kind))
    corpus = [{"text": "A red seven.", "image": None}, {"text": LONG_PASSAGE, "image": None},
              {"text": "A picture with its article.", "image": Image.new("RGB", (20, 20), (0, 90, 0))}]
    model.eval().build_document_index(corpus, processor, name="three documents")
    model.save_pretrained(tmp_path / "retriever")
    processor.save_pretrained(tmp_path / "retriever")
    result = hub_user_python(HUB_USER_SCRIPT, str(tmp_path / "retriever"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    queries = model.embed_queries(["a red seven"], [Image.new("RGB", (20, 20), (200, 30, 30))], processor)
    scores, ids = model.retrieve(queries, 2)
    expected_tower = "SiglipModel" if kind == "siglip" else "CLIPModel"
    assert report["classes"] == ["MultimodalRetrieverModel", expected_tower]
    assert report["ids"] == ids.tolist() and report["corpus"] == "three documents (3 documents)"
    torch.testing.assert_close(torch.tensor(report["scores"]), scores, atol=1e-5, rtol=1e-5)
    assert isinstance(MultimodalRetrieverProcessor.from_pretrained(tmp_path / "retriever"),
                      MultimodalRetrieverProcessor)


def test_siglip2s_image_inputs_reach_its_towers(tmp_path):
    """SigLIP 2's image processor gives patches with `pixel_attention_mask` and `spatial_shapes`; queries and
    documents carry them to its `get_image_features`. (Its Gemma tokenizer cannot be built here without its
    vocabulary, so the texts go through the locally built one.)"""
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    tokenizer = build_byte_level_tokenizer(image_token=None)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, patch_size=8,
                  num_patches=16)
    torch.manual_seed(0)
    siglip2 = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)).eval()
    siglip2.save_pretrained(tmp_path)
    model = MultimodalRetrieverModel.from_dual_encoder(str(tmp_path)).eval()
    processor = MultimodalRetrieverProcessor(Siglip2ImageProcessor(patch_size=8, max_num_patches=16), tokenizer,
                                             max_length=16, pad_to_max_length=True)
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 50, 3), dtype=np.uint8))
    queries = processor.process_queries(["a wide picture"], [wide])
    assert {"pixel_attention_mask", "spatial_shapes"} <= set(queries)
    with torch.no_grad():
        expected = siglip2.get_image_features(pixel_values=queries["pixel_values"],
                                              pixel_attention_mask=queries["pixel_attention_mask"],
                                              spatial_shapes=queries["spatial_shapes"])
        torch.testing.assert_close(model.encode_images(**{k: queries[k] for k in (
            "pixel_values", "pixel_attention_mask", "spatial_shapes")}), F.normalize(features(expected), dim=-1))
        model.build_document_index([{"text": "A passage.", "image": None}, {"text": "Its article.", "image": wide}],
                                   processor)
    _, ids = model.retrieve(model.embed_queries(["a wide picture"], [wide], processor), 2)
    assert sorted(ids[0].tolist()) == [0, 1]
