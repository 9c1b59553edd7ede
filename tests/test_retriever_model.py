"""The multimodal retriever: one embedding space for queries and documents, its ranking loss and training, and
its FAISS document index (saved with the model, loaded on first use, rebuilt for a new corpus)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling import DocumentIndex, MultimodalRetrieverModel
from modeling.modeling_retriever import ranking_loss
from train.bundled_data.retrieval_vqa import write_retrieval_vqa
from train.retrieval.models import build_tiny_retriever
from train.retrieval.retriever_training import rank_documents, ranking_metrics, train_retriever
from train.retrieval.task import load_retrieval_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrieval_vqa")
    write_retrieval_vqa(folder, n_train_catalogues=8, n_test_catalogues=2, n_train_archive=40, n_test_archive=10,
                        n_distractor_catalogues=1, n_distractor_drawings=5)
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
    documents = model.embed_documents(mixed_documents(task), processor)
    assert queries.shape == (4, 64) and documents.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([queries, documents]), axis=1), 1.0, rtol=1e-5)


def test_mixed_documents_come_back_in_document_order(task, tiny):
    model, processor = tiny
    documents = mixed_documents(task)
    mixed = model.embed_documents(documents, processor)
    one_by_one = np.concatenate([model.embed_documents([doc], processor) for doc in documents])
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
    """No batch statistic: in training mode an image embeds the same alone as among other images (BatchNorm would
    mix query and document images trained in one batch)."""
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


def test_a_training_batch_with_a_single_image_document_trains(task, tiny):
    """Query and document images share one image-tower batch; a batch of one image document still trains."""
    model, processor = tiny
    model.train()
    example = task.examples[0]
    queries = processor.process_queries([example.question], [example.image])
    documents = processor.process_documents(mixed_documents(task, n_text=1, n_image=1))
    output = model(**queries, document_input_ids=documents["input_ids"],
                   document_attention_mask=documents["attention_mask"],
                   document_pixel_values=documents["pixel_values"],
                   document_is_image=documents["document_is_image"], labels=torch.tensor([[True, False]]))
    output.loss.backward()
    assert output.logits_per_query.shape == (1, 2) and model.image_projection.weight.grad is not None


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

    assert {"documents.faiss", "documents.parquet"} <= {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".pkl", ".pickle", ".bin")]
    loaded = MultimodalRetrieverModel.from_pretrained(tmp_path).eval()
    assert loaded._document_index is None  # nothing read yet: loading needs neither faiss nor datasets
    loaded_scores, loaded_ids = loaded.retrieve(queries, k=3)
    assert torch.equal(loaded_ids, ids) and torch.allclose(loaded_scores, scores)
    assert loaded.document_index.documents([ids[0, 0]])[0]["text"] == task.corpus[int(ids[0, 0])]["text"]


def test_index_is_rebuilt_for_a_new_corpus_without_changing_weights(task, tiny):
    model, processor = tiny
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.build_document_index(task.corpus, processor)
    new_corpus = [{"text": "A document nobody asked about.", "image": None}, task.corpus[7], task.corpus[3]]
    model.build_document_index(new_corpus, processor)

    assert len(model.document_index) == 3
    assert all(torch.equal(weights[name], tensor) for name, tensor in model.state_dict().items())
    # Each document is its own nearest neighbour in the new index.
    _, ids = model.retrieve(model.embed_documents(new_corpus, processor), k=1)
    assert ids[:, 0].tolist() == [0, 1, 2]


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


def test_pretrained_siglip_towers_keep_their_shared_space(tmp_path):
    """Built from SigLIP parts (made locally here, as downloads would give them), the retriever embeds exactly as
    SigLIP does: identity projections, the checkpoint's logit scale."""
    import timm
    from safetensors.torch import save_file
    from transformers import SiglipConfig, SiglipModel

    from train.common.tokenizer import build_byte_level_tokenizer

    tokenizer = build_byte_level_tokenizer(image_token=None)
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    siglip = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    siglip.save_pretrained(tmp_path / "siglip")
    tokenizer.save_pretrained(tmp_path / "siglip")
    shape = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 1, "num_heads": 4}
    tower = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, num_classes=0, **shape).eval()
    save_file(tower.state_dict(), tmp_path / "tower.safetensors")

    model = MultimodalRetrieverModel.from_pretrained_components(
        "vit_base_patch16_siglip_224", str(tmp_path / "siglip"),
        {**shape, "pretrained_cfg_overlay": {"file": str(tmp_path / "tower.safetensors")}}).eval()
    ids = tokenizer(["a red seven", "the digit one"], padding="max_length", max_length=16, return_tensors="pt")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids["input_ids"], ids["attention_mask"]),
                                   F.normalize(siglip.text_model(**ids).pooler_output, dim=-1))
        torch.testing.assert_close(model.encode_images(pixels), F.normalize(tower(pixels), dim=-1))
    assert model.logit_scale.item() == pytest.approx(siglip.logit_scale.item())
    assert (model.config.image_size, model.config.text_pooling) == (32, "pooler")
    assert not [name for name, p in model.named_parameters() if p.is_meta]
