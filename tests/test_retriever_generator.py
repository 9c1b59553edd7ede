"""The retriever-generator: choice scoring, prompts built from documents, SigPhi and Mllama generators, saving and
loading (in a Hub user's process too), the corpus it searches, LoRA/QLoRA fine-tuning, pseudo-relevance without gold
documents, open-ended answers, and the training and evaluation CLIs."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor

from configuration import RetrieverGeneratorConfig
from modeling import MultimodalRetrieverModel, RetrieverGeneratorForMultipleChoice, SigPhiForConditionalGeneration
from modeling.large_index import on_disk_lists
from modeling.modeling_retriever import max_per_document
from modeling.modeling_retriever_generator import marginalize
from processing import RetrieverGeneratorProcessor
from tests.conftest import hub_user_python
from train.bundled_data.encyclopedia import write_encyclopedia
from train.bundled_data.retrieval_vqa import write_retrieval_vqa
from train.common.cli import run_cli
from train.common.tokenizer import build_byte_level_tokenizer
from train.evaluate_retriever_generator import RetrieverGeneratorEvaluateArguments
from train.evaluate_retriever_generator import main as evaluate_main
from train.retrieval import image_tower_standin, pipeline, pseudo_relevance
from train.retrieval.evaluation import evaluate_retriever_generator
from train.retrieval.generator_stage import generator_lora_config, generator_rows, train_generator
from train.retrieval.image_tower_standin import (VIEW_KINDS, instance_views, warm_up_image_tower,
                                                   warm_up_image_tower_on_validation)
from train.retrieval.joint_stage import document_relevance_loss
from train.retrieval.models import build_tiny_retriever, load_generator
from train.retrieval.pipeline import TrainRetrieverGeneratorArguments, train_retriever_generator
from train.retrieval.pseudo_relevance import (holds_answer, image_neighbours, lexical_neighbours,
                                              pseudo_relevance_labels)
from train.retrieval.ranking import CorpusSnapshot, rank_documents
from train.retrieval.task import RetrievalExample, RetrievalTask, load_retrieval_task
from train.sigphi.qlora import LANGUAGE_MODEL_LORA_TARGETS
from train.sigphi.tiny import build_tiny_sigphi

TEMPLATE = RetrieverGeneratorConfig().document_template
LLAMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}"
    "{%- for item in message['content'] -%}{%- if item['type'] == 'image' -%}{{- '<|image|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}{%- endfor -%}"
    "{{- '<|eot_id|>' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}")


def build_tiny_mllama() -> tuple[MllamaForConditionalGeneration, MllamaProcessor]:
    """A random Llama-3.2-Vision of the real architecture, a few layers wide, with a locally built tokenizer."""
    tokenizer = build_byte_level_tokenizer(image_token="<|image|>")
    tokenizer.add_tokens(["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                          "<|python_tag|>"], special_tokens=True)
    tokenizer.bos_token, tokenizer.chat_template = "<|begin_of_text|>", LLAMA_CHAT_TEMPLATE
    processor = MllamaProcessor(MllamaImageProcessor(size={"height": 16, "width": 16}, max_image_tiles=1),
                                tokenizer, chat_template=LLAMA_CHAT_TEMPLATE)
    torch.manual_seed(0)
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                           intermediate_size=64, vision_output_dim=64, image_size=16, patch_size=8, max_num_tiles=1,
                           intermediate_layers_indices=[0], supported_aspect_ratios=[[1, 1]]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, cross_attention_layers=[1],
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|eot_id|>"),
                         pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    return MllamaForConditionalGeneration(config).eval(), processor


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrieval_vqa")
    write_retrieval_vqa(folder, n_train_catalogues=6, n_val_catalogues=1, n_test_catalogues=2, n_train_archive=20,
                        n_val_archive=5, n_test_archive=10, n_distractor_catalogues=1, n_distractor_drawings=5)
    return folder


@pytest.fixture(scope="module")
def task(data):
    return load_retrieval_task(data / "train.csv", data / "corpus.jsonl")


def composite(task, generator, generator_processor):
    retriever, retriever_processor = build_tiny_retriever(task)
    retriever.eval().build_document_index(task.corpus, retriever_processor)
    config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config)
    model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator)
    return model.eval(), RetrieverGeneratorProcessor(retriever_processor, generator_processor)


@pytest.fixture(scope="module", params=["sigphi", "mllama"])
def model_and_processor(request, task):
    generator, generator_processor = build_tiny_sigphi() if request.param == "sigphi" else build_tiny_mllama()
    return composite(task, generator.eval(), generator_processor)


def question_with_documents(task):
    """A question with one text and one image document, images in RGB as a user would pass them."""
    text_doc = next(doc for doc in task.corpus if doc["image"] is None)
    image_doc = next(doc for doc in task.corpus if doc["image"] is not None)
    return task.examples[0], [text_doc, {**image_doc, "image": image_doc["image"].convert("RGB")}]


def hand_computed_log_likelihoods(generator, generator_processor, messages, images, choices) -> list[float]:
    """Sum over each answer's tokens of log p(token | everything before), one full forward pass per choice."""
    prompt = generator_processor.apply_chat_template(messages, add_generation_prompt=True)
    n_prompt = generator_processor(text=[prompt], images=[images], return_tensors="pt")["input_ids"].shape[1]
    scores = []
    for choice in choices:
        answer = [{"role": "assistant", "content": [{"type": "text", "text": choice}]}]
        inputs = generator_processor(text=[generator_processor.apply_chat_template(messages + answer)],
                                     images=[images], return_tensors="pt")
        with torch.no_grad():
            log_probs = generator(**inputs).logits[0].log_softmax(-1)
        ids = inputs["input_ids"][0]
        scores.append(sum(float(log_probs[t - 1, ids[t]]) for t in range(n_prompt, len(ids))))
    return scores


def test_marginalisation_matches_a_hand_computed_two_document_example():
    # p(choice | q, d): document 1 says choice 0 (0.6 / 0.4), document 2 says choice 1 (0.1 / 0.9).
    # doc_scores log 3 and log 1 at tau = 1 give p(d | q) = 0.75 / 0.25, so
    # p(choice 0) = 0.75 * 0.6 + 0.25 * 0.1 = 0.475 and p(choice 1) = 0.75 * 0.4 + 0.25 * 0.9 = 0.525.
    doc_choice_scores = torch.tensor([[[0.6, 0.4], [0.1, 0.9]]]).log()
    logits, posterior = marginalize(doc_choice_scores, torch.tensor([[3.0, 1.0]]).log())
    torch.testing.assert_close(posterior, torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(logits.exp(), torch.tensor([[0.475, 0.525]]))
    # At tau = 2 the posterior flattens to sqrt(3) : 1.
    _, flatter = marginalize(doc_choice_scores, torch.tensor([[3.0, 1.0]]).log(), doc_temperature=2.0)
    torch.testing.assert_close(flatter, torch.tensor([[3 ** 0.5, 1.0]]) / (3 ** 0.5 + 1))
    # Without doc_scores every document weighs the same.
    torch.testing.assert_close(marginalize(doc_choice_scores, None)[0].exp(), torch.tensor([[0.35, 0.65]]))


def test_choice_scores_marginalise_the_generators_log_likelihood_over_two_documents(task, model_and_processor):
    model, processor = model_and_processor
    example, documents = question_with_documents(task)
    image = example.image.convert("RGB")
    doc_scores = torch.tensor([2.0, 0.5])
    prediction = model.predict(processor, example.question, image, example.answer_choices, documents,
                               doc_scores=doc_scores)

    per_document = torch.tensor([hand_computed_log_likelihoods(
        model.generator, processor.generator_processor, *processor.conversation(example.question, image, [doc],
                                                                                 TEMPLATE), example.answer_choices)
        for doc in documents])  # (2 documents, 4 choices), each document read in its own sequence
    torch.testing.assert_close(prediction.doc_choice_scores, per_document, atol=1e-4, rtol=1e-5)
    posterior = doc_scores.softmax(-1)
    torch.testing.assert_close(prediction.doc_posterior, posterior)
    expected = (posterior[:, None] * per_document.exp()).sum(0).log()
    torch.testing.assert_close(prediction.choice_scores, expected, atol=1e-4, rtol=1e-5)
    assert prediction.label == int(expected.argmax())


def test_per_pair_scoring_gives_the_same_scores_as_cached_scoring(task, model_and_processor):
    model, processor = model_and_processor
    example, (text_doc, image_doc) = question_with_documents(task)
    documents = [text_doc, image_doc, task.corpus[3], text_doc, image_doc]  # 5 documents, lengths differ
    cached, pairs = (model.predict(processor, example.question, example.image, example.answer_choices, documents,
                                   doc_scores=torch.arange(5.0), scoring=scoring) for scoring in ("cached", "pairs"))
    torch.testing.assert_close(cached.doc_choice_scores, pairs.doc_choice_scores, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(cached.choice_scores, pairs.choice_scores, atol=1e-4, rtol=1e-5)


def test_length_normalisation_divides_by_the_number_of_answer_tokens(task, model_and_processor):
    model, processor = model_and_processor
    example, documents = question_with_documents(task)
    choices = ["red", "a very long answer about yellow"]
    summed, normalised = (model.predict(processor, example.question, example.image, choices, documents[:1],
                                        length_normalize=flag) for flag in (False, True))
    messages = processor.conversation(example.question, example.image, documents[:1], TEMPLATE)[0]
    prompt = processor.generator_processor.apply_chat_template(messages, add_generation_prompt=True)
    counts = torch.tensor([len(ids) for ids in processor._choice_token_ids(prompt, choices, messages)])
    assert counts[1] > counts[0] > 0
    torch.testing.assert_close(normalised.doc_choice_scores, summed.doc_choice_scores / counts)


def test_concatenation_stays_an_option(task, model_and_processor):
    model, processor = model_and_processor
    example, documents = question_with_documents(task)
    image = example.image.convert("RGB")
    prediction = model.predict(processor, example.question, image, example.answer_choices, documents,
                               marginalize=False)
    messages, images = processor.conversation(example.question, image, documents, TEMPLATE)
    expected = hand_computed_log_likelihoods(model.generator, processor.generator_processor, messages, images,
                                             example.answer_choices)
    torch.testing.assert_close(prediction.choice_scores, torch.tensor(expected), atol=1e-4, rtol=1e-5)


def test_generate_answers_in_free_text_the_rag_sequence_way(task, model_and_processor):
    """One greedy answer per retrieved document, each document read alone; the answer is the candidate with the
    highest marginal score over all the documents (RAG-Sequence)."""
    model, processor = model_and_processor
    example = task.examples[0]
    image = example.image.convert("RGB")
    scores, ids, retrieved = model.retrieve(processor, [example.question], [image], 3)
    documents, doc_scores = retrieved[0], scores[0][ids[0] >= 0]
    tokenizer = getattr(processor.generator_processor, "tokenizer", processor.generator_processor)
    candidates = []
    for document in documents:
        inputs = processor.generation_batch(example.question, image, [document], model.config.document_template)
        output = model.generator.generate(**inputs, max_new_tokens=4, do_sample=False)
        candidates.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    distinct = list(dict.fromkeys(candidate for candidate in candidates if candidate))
    answer = model.generate(processor, example.question, image, n_docs=3, max_new_tokens=4, do_sample=False)
    if len(distinct) == 1:  # the tiny random Mllama answers alike whatever it reads: nothing to re-score
        assert "Mllama" in type(model.generator).__name__, "SigPhi's documents must lead to different answers"
        assert answer == distinct[0]
        return
    marginal = model.predict(processor, example.question, image, distinct, documents, doc_scores=doc_scores)
    assert answer == distinct[int(marginal.choice_scores.argmax())]


def test_the_prompt_shows_text_documents_as_text_and_image_documents_as_images(task):
    example, (text_doc, image_doc) = question_with_documents(task)
    messages, images = RetrieverGeneratorProcessor.conversation(example.question, example.image, [text_doc, image_doc],
                                                                "Doc: {document}\n", answer="red")
    user, assistant = messages
    assert user["content"] == [{"type": "text", "text": f"Doc: {text_doc['text']}\n"},
                               {"type": "text", "text": "Doc: "}, {"type": "image"}, {"type": "text", "text": "\n"},
                               {"type": "image"}, {"type": "text", "text": example.question}]
    assert images == [image_doc["image"], example.image]
    assert assistant["content"] == [{"type": "text", "text": "red"}]
    # A picture with its article: the picture in the document's place, its text after it.
    article = {"image": image_doc["image"], "text": "The Kalomi eats fish."}
    messages, images = RetrieverGeneratorProcessor.conversation(example.question, None, [article], "Doc: {document}\n")
    assert messages[0]["content"] == [{"type": "text", "text": "Doc: "}, {"type": "image"},
                                      {"type": "text", "text": " The Kalomi eats fish.\n"},
                                      {"type": "text", "text": example.question}]
    assert images == [image_doc["image"]]


def test_forward_marginalises_and_trains_the_retriever_through_doc_scores(task, model_and_processor):
    model, processor = model_and_processor
    example, documents = question_with_documents(task)
    inputs = processor.marginal_inputs([example.question], [example.image], [documents], [example.answer_choices],
                                       TEMPLATE)
    doc_scores = torch.tensor([[1.0, -1.0]], requires_grad=True)
    label = torch.tensor([example.label])
    output = model(**inputs, doc_scores=doc_scores, labels=label)
    assert output.logits.shape == (1, len(example.answer_choices))
    assert output.doc_choice_scores.shape == (1, 2, len(example.answer_choices))
    marginal = torch.logsumexp(output.doc_choice_scores + doc_scores.log_softmax(-1)[..., None], dim=1)
    torch.testing.assert_close(output.logits, marginal)
    expected_loss = torch.nn.functional.cross_entropy(marginal, label) - marginal[0, example.label]
    torch.testing.assert_close(output.loss, expected_loss)
    output.loss.backward()
    assert doc_scores.grad is not None and doc_scores.grad.abs().sum() > 0


def test_predict_reads_the_top_retrieved_documents_and_says_which_corpus_it_searched(task, model_and_processor):
    model, processor = model_and_processor
    example = task.examples[1]
    _, ids, documents = model.retrieve(processor, [example.question], [example.image], n_docs=2)
    prediction = model.predict(processor, example.question, example.image, example.answer_choices, n_docs=2)
    assert [doc["text"] for doc in prediction.documents] == [doc["text"] for doc in documents[0]]
    assert [doc["text"] for doc in documents[0]] == [task.corpus[i]["text"] for i in ids[0].tolist()]
    assert prediction.corpus == f"corpus ({len(task.corpus)} documents)"
    given = model.predict(processor, example.question, example.image, example.answer_choices, documents[0])
    assert given.corpus == "the documents given"


def test_index_corpus_replaces_what_the_model_searches(task, model_and_processor):
    model, processor = model_and_processor
    example = task.examples[1]
    other = [{"text": "Nothing about colours.", "image": None}, {"text": "Nor here.", "image": None}]
    try:
        model.index_corpus(other, processor, name="two documents")
        prediction = model.predict(processor, example.question, example.image, example.answer_choices, n_docs=5)
        assert prediction.corpus == "two documents (2 documents)"
        assert sorted(doc["text"] for doc in prediction.documents) == ["Nor here.", "Nothing about colours."]
    finally:
        model.index_corpus(task.corpus, processor)


@pytest.fixture(scope="module")
def saved(task, tmp_path_factory):
    """A SigPhi retriever-generator saved as train.train_retriever_generator saves it."""
    model, processor = composite(task, *build_tiny_sigphi())
    folder = tmp_path_factory.mktemp("retriever_generator")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


HUB_USER_SCRIPT = """
import json, sys
from PIL import Image
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
folder, question, image = sys.argv[1], sys.argv[2], Image.open(sys.argv[3])
retriever = AutoModel.from_pretrained(folder + "/retriever", trust_remote_code=True)
retriever_processor = AutoProcessor.from_pretrained(folder + "/retriever", trust_remote_code=True)
generator = AutoModelForImageTextToText.from_pretrained(folder + "/generator", trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
prediction = model.predict(processor, question, image, ["red", "blue", "green", "pink"])
print(json.dumps({"classes": [type(x).__name__ for x in (retriever, retriever_processor, generator, model, processor)],
                  "module": type(model).__module__, "scores": prediction.choice_scores.tolist(),
                  "documents": [doc["text"] for doc in prediction.documents]}))
"""


def test_saved_folders_load_in_a_hub_users_process(task, saved, tmp_path):
    model, processor, folder = saved
    assert not list(folder.glob("*.safetensors"))  # the composite is assembled from retriever/ and generator/
    example = next(e for e in task.examples if e.image is not None)
    example.image.save(tmp_path / "question.png")
    result = hub_user_python(HUB_USER_SCRIPT, str(folder), example.question, str(tmp_path / "question.png"),
                             cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classes"] == ["MultimodalRetrieverModel", "MultimodalRetrieverProcessor",
                                 "SigPhiForConditionalGeneration", "RetrieverGeneratorForMultipleChoice",
                                 "RetrieverGeneratorProcessor"]
    assert report["module"].startswith("transformers_modules")
    local = model.predict(processor, example.question, example.image, ["red", "blue", "green", "pink"])
    assert report["documents"] == [doc["text"] for doc in local.documents]
    torch.testing.assert_close(torch.tensor(report["scores"]), local.choice_scores, atol=1e-4, rtol=1e-5)


def test_a_retriever_generator_with_an_on_disk_index_answers_in_a_hub_users_process(task, tmp_path):
    """A corpus indexed with its inverted lists on disk (IVF, `on_disk`) travels in the saved folder; a process
    without this project loads the folder through the Auto classes, memory-maps the lists and retrieves what the
    building process retrieved."""
    model, processor = composite(task, *build_tiny_sigphi())
    model.index_corpus(task.corpus, processor, factory="IVF4,Flat", search_parameters="nprobe=4",
                       on_disk=tmp_path / "build" / "lists.ivfdata")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    shutil.rmtree(tmp_path / "build")  # the folder alone must hold the lists
    assert (folder / "retriever" / "documents.ivfdata").is_file()
    example = next(e for e in task.examples if e.image is not None)
    example.image.save(tmp_path / "question.png")
    result = hub_user_python(HUB_USER_SCRIPT, str(folder), example.question, str(tmp_path / "question.png"),
                             cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    local = model.predict(processor, example.question, example.image, ["red", "blue", "green", "pink"])
    report = next(line for line in result.stdout.splitlines() if line.startswith('{"classes"'))  # faiss prints too
    assert json.loads(report)["documents"] == [doc["text"] for doc in local.documents]


def test_weights_are_saved_once_in_the_subfolders(saved):
    model, processor, folder = saved
    assert not list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))  # no top-level copy
    parts = {name: len(list((folder / name).glob("*.safetensors"))) for name in ("retriever", "generator")}
    assert parts == {"retriever": 1, "generator": 1}
    assert json.loads((folder / "config.json").read_text())["weights_in_subfolders"] is True
    reloaded = RetrieverGeneratorForMultipleChoice.from_pretrained(folder)
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert reloaded.config.n_docs == model.config.n_docs and not reloaded.training


def test_folders_of_the_older_layout_still_load(task, saved, tmp_path):
    """Saved before weights were stored once: every weight at the top level too, no n_docs in config.json
    (the default was one document then). Loads with the new class, reading one document."""
    from modeling import RetrieverGeneratorPreTrainedModel

    model, processor, _ = saved
    model.retriever.save_pretrained(tmp_path / "retriever")
    model.generator.save_pretrained(tmp_path / "generator")
    model.config.weights_in_subfolders = False
    RetrieverGeneratorPreTrainedModel.save_pretrained(model, tmp_path)  # the top-level copy, as before
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("n_docs", "marginalize", "doc_temperature", "length_normalize", "weights_in_subfolders"):
        config.pop(key, None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert (tmp_path / "model.safetensors").is_file()

    old = RetrieverGeneratorForMultipleChoice.from_pretrained(tmp_path)
    assert old.config.n_docs == 1 and not old.config.weights_in_subfolders
    for name, tensor in model.state_dict().items():
        assert torch.equal(old.state_dict()[name], tensor), name
    example = task.examples[2]
    torch.testing.assert_close(
        old.predict(processor, example.question, example.image, example.answer_choices).choice_scores,
        model.predict(processor, example.question, example.image, example.answer_choices, n_docs=1).choice_scores)


def test_from_retriever_generator_pretrained_joins_saved_parts(saved):
    model, _, folder = saved
    joined = RetrieverGeneratorForMultipleChoice.from_retriever_generator_pretrained(
        folder / "retriever", folder / "generator", n_docs=3)
    assert joined.config.n_docs == 3
    assert isinstance(joined.generator, SigPhiForConditionalGeneration)
    for name, tensor in model.state_dict().items():
        assert torch.equal(joined.state_dict()[name], tensor), name
    assert len(joined.retriever.document_index) == len(model.retriever.document_index)


def test_a_mllama_retriever_generator_saves_and_reloads(task, tmp_path):
    model, processor = composite(task, *build_tiny_mllama())
    model.save_pretrained(tmp_path)
    reloaded = RetrieverGeneratorForMultipleChoice.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded.generator, MllamaForConditionalGeneration)
    example = task.examples[0]
    torch.testing.assert_close(
        reloaded.predict(processor, example.question, example.image, example.answer_choices).choice_scores,
        model.predict(processor, example.question, example.image, example.answer_choices).choice_scores)


def test_generator_fine_tunes_lora_adapters_and_merges_them(task, tmp_path):
    generator, generator_processor = build_tiny_sigphi()
    before = {name: tensor.clone() for name, tensor in generator.state_dict().items()}
    rows = generator_rows(task, [e.gold_document_ids for e in task.examples[:16]], TEMPLATE)
    tuned = train_generator(generator, generator_processor, rows, str(tmp_path), epochs=1, batch_size=8,
                            peft_config=generator_lora_config(LANGUAGE_MODEL_LORA_TARGETS, r=4))
    after = tuned.state_dict()
    assert isinstance(tuned, SigPhiForConditionalGeneration) and set(after) == set(before)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("language_model" in name for name in changed)


def test_qlora_trains_a_4bit_generator(tmp_path):
    generator, generator_processor = build_tiny_sigphi()
    generator.save_pretrained(tmp_path / "sigphi")
    generator_processor.save_pretrained(tmp_path / "sigphi")
    quantized, processor = load_generator(str(tmp_path / "sigphi"), load_in_4bit=True)
    assert "4bit" in type(quantized.model.language_model.layers[0].mlp.down_proj).__name__
    image = Image.new("L", (8, 8), 255)
    rows = [{"messages": RetrieverGeneratorProcessor.conversation("What colour?", image, [], TEMPLATE, answer="red")[0],
             "images": [image]}] * 4
    tuned = train_generator(quantized, processor, rows, str(tmp_path), epochs=1, batch_size=2,
                            peft_config=generator_lora_config(LANGUAGE_MODEL_LORA_TARGETS, r=4))
    assert not any("lora" in name for name, _ in tuned.named_parameters())


# Short runs: these tests check the pipeline, not the quality (README has the measured numbers).
TINY_RUN = dict(preset="tiny", retriever_epochs=1, generator_epochs=0.5, image_warm_up_epochs=1, reader_epochs=0.05,
                reader_vision_epochs=1)


def test_training_and_evaluation_clis(data, tmp_path, capsys):
    """Training chooses on the validation split and reads the test split once; the evaluation CLI searches the saved
    training corpus plus the CSV's documents by default, and prints what the saved model does question by question."""
    output_dir, test_csv = tmp_path / "o", str(data / "test.csv")
    report = train_retriever_generator(TrainRetrieverGeneratorArguments(
        train_csv=str(data / "train.csv"), val_csv=str(data / "val.csv"), eval_csv=test_csv,
        corpus=str(data / "corpus.jsonl"), output_dir=str(output_dir), **TINY_RUN))
    assert (report["n_train"], report["n_val"], report["test"]["n"]) == (80, 15, 30)
    assert {"accuracy", "retriever_recall_at_1", "retriever_recall_at_5", "retriever_mrr"} <= set(report["validation"])
    assert len(report["validation_by_epoch"]) == 2 and report["selected_epoch"] in (0, 1)
    training_corpus = load_retrieval_task(data / "train.csv", data / "corpus.jsonl").corpus
    test_documents = load_retrieval_task(test_csv).corpus
    open_corpus = len(training_corpus) + len(test_documents)
    assert report["test"]["corpus"] == f"training corpus + {test_csv} documents ({open_corpus} documents)"
    assert MultimodalRetrieverModel.from_pretrained(output_dir / "retriever").document_index.describe() == (
        f"training corpus ({len(training_corpus)} documents)")

    # what the CLI prints must be what the saved model does, question by question (no batching, no grouping)
    model = RetrieverGeneratorForMultipleChoice.from_pretrained(output_dir).eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(output_dir)
    eval_task = load_retrieval_task(test_csv).searching(training_corpus)
    ranked, scores = rank_documents(model.retriever, processor.retriever_processor, eval_task, 5, return_scores=True)
    first_gold = [next((rank for rank, i in enumerate(ids, 1) if i in example.gold_document_ids), None)
                  for ids, example in zip(ranked, eval_task.examples)]
    for docs in ("retrieved", "none", "oracle"):
        run_cli(evaluate_main, RetrieverGeneratorEvaluateArguments,
                argv=["--model", str(output_dir), "--csv", test_csv, "--docs", docs])
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["docs"] == docs and result["n"] == 30 and result["corpus"] == report["test"]["corpus"]
        correct = 0
        for example, ids, doc_scores in zip(eval_task.examples, ranked, scores):
            read = {"retrieved": eval_task.documents(ids), "none": [],
                    "oracle": eval_task.documents(example.gold_document_ids[:5])}[docs]
            prediction = model.predict(processor, example.question, example.image, example.answer_choices, read,
                                       doc_scores=torch.tensor(doc_scores) if docs == "retrieved" else None)
            correct += prediction.label == example.label
        assert result["accuracy"] == pytest.approx(correct / 30)
        assert result["retriever_recall_at_1"] == pytest.approx(sum(rank == 1 for rank in first_gold) / 30)
        assert result["retriever_recall_at_5"] == pytest.approx(sum(rank is not None for rank in first_gold) / 30)
        if docs == "retrieved":
            assert result["accuracy"] == report["test"]["accuracy"]

    # --corpus replaces the saved index (its documents and the CSV's); --closed_corpus searches the CSV's alone
    distractors = len((data / "corpus.jsonl").read_text().splitlines())
    for flags, corpus in ((["--corpus", str(data / "corpus.jsonl")],
                           f"{data / 'corpus.jsonl'} + {test_csv} documents ({distractors + len(test_documents)} "
                           "documents)"),
                          (["--closed_corpus"], f"{test_csv} documents ({len(test_documents)} documents)")):
        run_cli(evaluate_main, RetrieverGeneratorEvaluateArguments, argv=["--model", str(output_dir), "--csv",
                                                                          test_csv, *flags])
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["corpus"] == corpus


def test_training_fine_tunes_pretrained_parts_with_lora(data, task, tmp_path):
    retriever, retriever_processor = build_tiny_retriever(task)
    retriever.save_pretrained(tmp_path / "retriever")
    retriever_processor.save_pretrained(tmp_path / "retriever")
    generator, generator_processor = build_tiny_sigphi()
    generator.save_pretrained(tmp_path / "sigphi")
    generator_processor.save_pretrained(tmp_path / "sigphi")
    args = TrainRetrieverGeneratorArguments(
        train_csv=str(data / "train.csv"), val_fraction=0.2, output_dir=str(tmp_path / "o"),
        retriever_model=str(tmp_path / "retriever"), generator_model=str(tmp_path / "sigphi"), lora_r=4,
        retriever_epochs=1, generator_epochs=0.5)
    train_retriever_generator(args)
    tuned = SigPhiForConditionalGeneration.from_pretrained(tmp_path / "o" / "generator")
    tuned_weights = tuned.state_dict()
    changed = [name for name, tensor in generator.state_dict().items() if not torch.equal(tensor, tuned_weights[name])]
    assert changed and all("language_model" in name for name in changed)  # only where the LoRA adapters were


def test_a_text_holds_the_answer_when_it_names_an_acceptable_one_whatever_else_it_names():
    """RA-VQA's test, for any corpus: a reference answer or alias as whole words; a picture alone cannot be read."""
    answers = ["blue", "navy"]
    assert holds_answer({"text": "In the Kalomi catalogue, the digit seven is blue."}, answers) is True
    assert holds_answer({"text": "The digit seven is red. The digit two is navy."}, answers) is True  # others too
    assert holds_answer({"text": "The Kalomi's roof is uncovered red."}, ["red", "cover"]) is True
    assert holds_answer({"text": "Blueprints of the covered bridge."}, answers + ["red"]) is False  # not words
    assert holds_answer({"text": None, "image": object()}, answers) is None  # the generator must judge
    assert holds_answer({"text": "Its eggs are navy.", "image": object()}, answers) is True  # by its article


class FixedGains:
    """Stands in for `generator_gains`: each (question, candidate document id) pair's gain from a table."""

    def __init__(self, table: dict):
        self.table = table

    def __call__(self, model, processor, examples, documents):
        return torch.tensor([[self.table.get((e.question, d["text"]), -1.0) for d in row]
                             for e, row in zip(examples, documents)])


def test_a_candidate_counts_when_neither_test_says_no_and_one_says_yes(monkeypatch):
    """Text test x generator's gain: an answer in the text counts unless reading it lowers the generator's belief (once
    the generator is warm-started and so judges texts too); a picture without text counts only when reading it raises
    that belief; a text without the answer never counts."""
    corpus = [{"text": "The Kalomi eats fish.", "image": None}, {"text": "The Kalomi eats fish and berries.",
                                                                  "image": None},
              {"text": None, "image": "picture"}, {"text": "The Kalomi eats seeds.", "image": None}]
    example = RetrievalExample("What does the Kalomi eat?", None, None, None, [], answers=["fish"])
    task = RetrievalTask([example], corpus)
    candidates = np.array([[0, 1, 2, 3]])
    monkeypatch.setattr(pseudo_relevance, "lexical_neighbours", lambda task, depth: candidates)
    monkeypatch.setattr(pseudo_relevance, "image_neighbours",
                        lambda *args: (np.full((1, 4), -1), np.full(1, -1)))
    gains = {(example.question, "The Kalomi eats fish."): 2.0, (example.question, None): 1.5,
             (example.question, "The Kalomi eats seeds."): 3.0}
    monkeypatch.setattr(pseudo_relevance, "generator_gains", FixedGains(gains))
    model = type("Model", (), {"retriever": None})()
    processor = type("Processor", (), {"retriever_processor": None})()
    label = lambda **kwargs: pseudo_relevance_labels(model, processor, task, depth=4, sources=("words",), **kwargs)  # noqa
    assert label(use_generator=False) == [[0, 1]]  # the text test alone: both texts naming fish
    assert label() == [[0, 2]]  # the generator vetoes text 1 and admits the picture; text 3 lacks the answer
    assert label(margin=1.8) == [[0]]
    assert label(judge_texts=False) == [[0, 1, 2]]  # before its warm start it judges only the picture


def test_nearest_picture_only_keeps_the_bare_picture_the_image_tower_ranks_first_among_those_that_pass(monkeypatch):
    """DPR's distant supervision with the picture's likeness as the prior: of the pictures without text that the
    generator passes, whichever neighbourhood found them, only the one nearest the question's picture counts; a
    picture with its article keeps its text test, and text candidates are judged as before."""
    corpus = [{"text": "The Kalomi eats fish.", "image": None}, {"text": None, "image": "next"},
              {"text": None, "image": "farther"}, {"text": None, "image": "nearest"},
              {"text": "The Lomi eats fish.", "image": "article"}, {"text": None, "image": "unranked"}]
    example = RetrievalExample("What does this creature eat?", "photo", None, None, [], answers=["fish"])
    task = RetrievalTask([example], corpus)
    monkeypatch.setattr(pseudo_relevance, "lexical_neighbours", lambda task, depth: np.array([[5, 0, -1, -1]]))
    monkeypatch.setattr(pseudo_relevance, "image_neighbours",
                        lambda *args: (np.array([[3, 4, 1, 2]]), np.full(1, -1)))
    gains = {"nearest": -1.0}  # reading the nearest picture does not help: not a positive
    monkeypatch.setattr(pseudo_relevance, "generator_gains", lambda model, processor, examples, documents: torch.tensor(
        [[gains.get(d["image"], 1.0) for d in row] for row in documents]))
    model = type("Model", (), {"retriever": None})()
    processor = type("Processor", (), {"retriever_processor": None})()
    label = lambda **kwargs: pseudo_relevance_labels(model, processor, task, depth=4,  # noqa: E731
                                                     sources=("words", "pictures"), **kwargs)
    assert sorted(label(nearest_picture_only=False)[0]) == [0, 1, 2, 4, 5]
    assert sorted(label()[0]) == [0, 1, 4]  # "next": ranked above "farther" and "unranked"


class EmbeddingTable:
    """A stand-in retriever whose image tower is a table: picture name -> embedding."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def eval(self):
        return self

    def encode_images(self, pixel_values):
        return torch.tensor([self.table[name] for name in pixel_values])


class NamesProcessor:
    @staticmethod
    def _image_inputs(images):
        return {"pixel_values": images}


def test_image_neighbours_find_pictures_and_copies_are_mutual_nearest_neighbours():
    """A question's picture has a copy among the documents' pictures only when the nearest document picture picks that
    picture back among all the questions' pictures; questions without a picture, and pictures whose nearest document
    is nearer another question's picture, have none. Pictures with text count as pictures."""
    table = {"drawing a": [1.0, 0.0], "painting of a": [0.96, 0.28], "drawing b": [0.0, 1.0],
             "painting of b": [0.28, 0.96], "look-alike of a": [0.8, 0.6]}
    corpus = [{"text": "A fact.", "image": None}, {"text": None, "image": "painting of a"},
              {"text": "An article.", "image": "painting of b"}]
    examples = [RetrievalExample("q", image, ["x", "y"], 0, []) for image in
                ("drawing a", "look-alike of a", "drawing b", None, "drawing a")]
    # "look-alike of a" is nearest "painting of a" (0.936) too, but that painting is nearer "drawing a" (0.96).
    nearest, copies = image_neighbours(EmbeddingTable(table), NamesProcessor(), RetrievalTask(examples, corpus), 2)
    assert copies.tolist() == [1, -1, 2, -1, 1]  # two questions showing one drawing share its copy
    assert nearest.tolist() == [[1, 2], [1, 2], [2, 1], [-1, -1], [1, 2]]  # pictured documents only, best first


def test_a_corpus_snapshot_finds_and_scores_documents_as_scoring_the_whole_corpus_would(task):
    """Joint training never scores the whole corpus: its snapshot's index finds each query's nearest documents, and
    any candidates score exactly as in the (queries x corpus) matrix, a long passage by its best chunk, with gradients
    through the queries."""
    retriever, processor = build_tiny_retriever(task)
    corpus = [*task.corpus, {"text": " ".join(["A passage that the text tower cannot read at once."] * 20),
                             "image": None}]
    snapshot = CorpusSnapshot(retriever, processor, corpus)
    examples = task.examples[:6]
    queries = retriever.encode_queries(**processor.process_queries([e.question for e in examples],
                                                                   [e.image for e in examples]))
    chunks, owners = retriever.embed_documents(corpus, processor)
    assert (np.bincount(owners) > 1).any()  # the long passage is several chunks
    whole = max_per_document(retriever.score(queries, torch.from_numpy(chunks)), torch.from_numpy(owners),
                             len(corpus))  # (6, corpus)
    candidates = np.array([len(corpus) - 1, 0, 5, 3])
    scored = snapshot.score(queries, candidates)
    torch.testing.assert_close(scored, whole[:, candidates], rtol=1e-5, atol=1e-5)
    assert scored.requires_grad
    nearest = snapshot.search(queries, 4)
    expected = whole.detach().topk(4, dim=-1).values
    torch.testing.assert_close(whole.detach().gather(1, torch.from_numpy(nearest)), expected, rtol=1e-5, atol=1e-5)


def test_document_relevance_loss_asks_for_the_answer_from_a_relevant_document_and_no_answer_from_others():
    uniform = torch.zeros(2)  # log-likelihoods of two choices, equal
    sure_of_first = torch.log(torch.tensor([0.8, 0.2]))
    scores = torch.stack([uniform, sure_of_first])[None]  # (1 question, 2 documents, 2 choices)
    label = torch.tensor([0])
    # Document 0 relevant (the answer's -log p = log 2), document 1 not (KL(uniform || [0.8, 0.2])).
    kl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    expected = (math.log(2) + kl) / 2
    assert document_relevance_loss(scores, label, torch.tensor([[True, False]])).item() == pytest.approx(expected)
    # Nothing to learn: the relevant document answers right for sure, the irrelevant one does not choose.
    settled = torch.stack([torch.tensor([0.0, -30.0]), uniform])[None]
    assert document_relevance_loss(settled, label, torch.tensor([[True, False]])).item() == pytest.approx(0, abs=1e-6)


def test_lexical_neighbours_find_the_facts_that_name_the_questions_catalogue(task):
    """Without gold labels the first candidates come from the question's words: a catalogue question's nearest
    text documents are that catalogue's facts (its name is the rare word)."""
    catalogue_rows = [i for i, e in enumerate(task.examples) if "catalogue" in e.question]
    nearest = lexical_neighbours(task, depth=10)
    assert nearest.shape == (len(task.examples), 10)
    for i in catalogue_rows:
        name = task.examples[i].question.split()[2]  # "In the Kalomi catalogue, ..."
        assert all(f"the {name} catalogue" in task.corpus[doc]["text"] for doc in nearest[i])
        assert task.examples[i].gold_document_ids[0] in nearest[i]
    archive_rows = [i for i, e in enumerate(task.examples) if "archive" in e.question]
    assert (nearest[archive_rows] == -1).all()  # no fact shares a word with "sample archive ... drawing"


def test_the_image_stand_in_lets_pictures_find_their_copies(tmp_path):
    """The tiny image tower's stand-in for SigLIP, without labels: instance discrimination on the task's own pictures
    brings each archive drawing's painted copy (another colour, another brightness) near it among the pictures. With
    `picture_copies`, pseudo-relevance then takes the copy for the drawing's document and no other picture; by
    default, before the generator can judge, a picture is no one's pseudo-relevant document."""
    write_retrieval_vqa(tmp_path, n_train_catalogues=1, n_val_catalogues=1, n_test_catalogues=1, n_train_archive=150,
                        n_val_archive=2, n_test_archive=5, n_distractor_catalogues=1, n_distractor_drawings=10)
    task = load_retrieval_task(tmp_path / "train.csv", tmp_path / "corpus.jsonl")
    answers_only = task.without_gold_documents()
    retriever, processor = build_tiny_retriever(answers_only)
    archive = [e for e in task.examples if "archive" in e.question]
    image_ids = [i for i, doc in enumerate(task.corpus) if doc["image"] is not None]

    def painted_copy_rank() -> np.ndarray:
        with torch.no_grad():
            drawings = retriever.encode_images(processor.process_queries(
                [e.question for e in archive], [e.image for e in archive])["pixel_values"])
            paintings = retriever.encode_images(processor.process_documents(
                [task.corpus[i] for i in image_ids])["pixel_values"])
        order = np.asarray(image_ids)[(drawings @ paintings.T).argsort(-1, descending=True).numpy()]
        return np.array([list(row).index(e.gold_document_ids[0]) for row, e in zip(order, archive)])

    before = painted_copy_rank()
    losses = warm_up_image_tower(retriever, processor, [e.image for e in task.examples] +
                                 [doc["image"] for doc in task.corpus], epochs=100, batch_size=64)
    after = painted_copy_rank()
    assert losses[-1] < losses[0]
    # Among 160 paintings: a random tower puts the copy in the top 5 for about one drawing in ten.
    assert (after < 5).mean() >= 0.5 and (after < 5).mean() >= (before < 5).mean() + 0.3, (before, after)

    generator, generator_processor = build_tiny_sigphi()
    config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config)
    model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator)
    both = RetrieverGeneratorProcessor(processor, generator_processor)
    for copies in (True, False):
        labels = pseudo_relevance_labels(model, both, answers_only, use_generator=False, picture_copies=copies,
                                         sources=("words", "pictures"))
        archive_labels = [row for row, e in zip(labels, task.examples) if "archive" in e.question]
        if copies:
            assert np.mean([row == e.gold_document_ids for row, e in zip(archive_labels, archive)]) >= 0.5
        else:
            assert not any(archive_labels)
        assert all(e.gold_document_ids[0] in row for row, e in zip(labels, task.examples) if "catalogue" in e.question)

    # Hard EM: of the pseudo-relevant documents, only the one the retriever ranks highest.
    best = pseudo_relevance_labels(model, both, answers_only, use_generator=False, sources=("words", "pictures"),
                                   best_only=True)
    ranked, scores = rank_documents(retriever, processor, answers_only, len(task.corpus), return_scores=True)
    for every, chosen, ids, row_scores in zip(labels, best, ranked, scores):
        assert len(chosen) == min(1, len(every)) and set(chosen) <= set(every)
        score = dict(zip(ids.tolist(), row_scores.tolist()))
        assert all(score[chosen[0]] >= score[i] - 1e-4 for i in every)


def test_only_the_crops_views_keep_every_colour_as_it_is():
    """What a kind of views changes is what the tower learns to ignore: the copies' drop colours (a repainted copy),
    SimCLR's jitter or drop them, the crops keep each colour's hue and change only where a thing is and how bright."""
    red = Image.new("RGB", (32, 32), (230, 40, 40))

    def stays_red(view: Image.Image) -> bool:  # the centre pixel, which no crop, shift or turn leaves
        r, g, b = (int(channel) for channel in view.getpixel((8, 8)))
        return r > 2.5 * max(g, b) and abs(g - b) <= 4

    torch.manual_seed(0)
    kept = {kind: [stays_red(instance_views(kind, size=16)(red)) for _ in range(40)] for kind in VIEW_KINDS}
    assert all(kept["crops"])
    assert not all(kept["copies"]) and not all(kept["simclr"])


def test_the_image_warm_up_keeps_the_views_under_which_validation_pictures_find_their_documents(data, task,
                                                                                                monkeypatch):
    """Each kind of views warms the tower up from the same start; the kind whose tower ranks the validation questions'
    gold pictures nearest is kept, with the weights and random state it ended with, as if it had run alone. Without
    validation questions whose gold document is a picture, only the first kind runs."""
    retriever, processor = build_tiny_retriever(task)
    marker = retriever.image_projection.bias  # each kind's warm-up leaves its mark here
    start, ended_with = marker.detach().clone(), {}

    def warm_up(retriever, processor, images, epochs, seed, views):
        assert torch.equal(marker, start)  # every kind starts from the same weights
        with torch.no_grad():
            marker.fill_(VIEW_KINDS.index(views) + 1.0)
        torch.rand(3)  # a warm-up draws random views
        ended_with[views] = torch.get_rng_state()
        return [10.0, 1.0 + VIEW_KINDS.index(views)]

    def neighbours(retriever, processor, val_task, depth):
        """The first kind's tower finds every gold picture first, the others' none (the last to run does not win)."""
        found = marker[0].item() == 1.0
        nearest = np.array([[e.gold_document_ids[0] if found else -1] * depth for e in val_task.examples])
        return nearest, np.full(len(val_task.examples), -1)

    monkeypatch.setattr(image_tower_standin, "warm_up_image_tower", warm_up)
    monkeypatch.setattr(image_tower_standin, "image_neighbours", neighbours)
    validation = load_retrieval_task(data / "val.csv", data / "corpus.jsonl")
    chosen = warm_up_image_tower_on_validation(retriever, processor, [], validation, depth=10, epochs=1)
    assert chosen == {"views": VIEW_KINDS[0], "mrr": {kind: float(kind == VIEW_KINDS[0]) for kind in VIEW_KINDS},
                      "loss": 1.0}
    assert marker[0].item() == 1.0 and torch.equal(torch.get_rng_state(), ended_with[VIEW_KINDS[0]])

    marker.data.copy_(start)
    texts_only = validation.subset([i for i, e in enumerate(validation.examples) if "catalogue" in e.question])
    ended_with.clear()
    chosen = warm_up_image_tower_on_validation(retriever, processor, [], texts_only, depth=10, epochs=1)
    assert chosen == {"views": VIEW_KINDS[0], "mrr": {VIEW_KINDS[0]: None}, "loss": 1.0} and list(ended_with) == [
        VIEW_KINDS[0]]


def test_training_from_answers_only(data, tmp_path, monkeypatch):
    """No documents column: the retriever starts from pseudo-relevant documents (near the question, naming its
    answer), trains again on the one of them it then ranks highest (hard EM), and the generator and retriever train
    jointly, relabelling the same way; the generator judges texts only once it has been warm-started (for the joint
    epoch's labels); the run saves a loadable model whose index holds the training corpus."""
    judged_texts = []

    def recording(*args, judge_texts=True, **kwargs):
        judged_texts.append(judge_texts)
        return pseudo_relevance.pseudo_relevance_labels(*args, judge_texts=judge_texts, **kwargs)

    monkeypatch.setattr(pipeline, "pseudo_relevance_labels", recording)
    report = train_retriever_generator(TrainRetrieverGeneratorArguments(
        train_csv=str(data / "train_answers_only.csv"), val_csv=str(data / "val.csv"),
        corpus=str(data / "train_documents.jsonl"), output_dir=str(tmp_path / "o"), joint_epochs=1, hard_em_epochs=1,
        index_factory="IVF4,Flat", index_search_parameters="nprobe=4", on_disk_index=True, **TINY_RUN))
    assert report["supervision"] == "answers only (pseudo-relevance)"
    # the tiny image tower learns pictures first (the corpus has some), with the views validation prefers
    assert report["image_warm_up"]["views"] in VIEW_KINDS and set(report["image_warm_up"]["mrr"]) == set(VIEW_KINDS)
    stage_1, hard_em, joint = report["pseudo_labels"]
    assert judged_texts == [False, False, True]  # first round, hard-EM relabelling, after the warm start
    assert 0 < stage_1["questions"] <= 80 and 0 <= joint["questions"] <= 80
    assert stage_1["per_question"] >= 1
    assert all(labels["per_question"] == (1 if labels["questions"] else 0) for labels in (hard_em, joint))
    assert "precision" not in stage_1  # this CSV names no gold documents to measure them against
    assert report["validation"]["n"] == 15 and report["validation"]["retriever_recall_at_1"] is not None
    reloaded = RetrieverGeneratorForMultipleChoice.from_pretrained(tmp_path / "o")
    assert reloaded.config.n_docs == 5 and len(reloaded.retriever.document_index) == len(
        load_retrieval_task(data / "train_answers_only.csv", data / "train_documents.jsonl").corpus)
    # The saved index as asked: IVF, its lists on disk beside it (memory-mapped), no scratch files left behind.
    assert on_disk_lists(reloaded.retriever.document_index.faiss_index) is not None
    assert (tmp_path / "o" / "retriever" / "documents.ivfdata").is_file()
    assert not list((tmp_path / "o").glob(".index-*"))


@pytest.fixture(scope="module")
def encyclopedia(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encyclopedia")
    write_encyclopedia(folder, n_train=20, n_val=5, n_test=8, n_distractors=5)
    return folder


def test_open_ended_training_and_evaluation(encyclopedia, tmp_path, capsys):
    """Open-ended questions (the `answers` column alone) train with the marginal likelihood of the target answer;
    the evaluation generates an answer per question, RAG-Sequence style, and scores it by VQA accuracy and exact
    match against the reference answers, exactly as `generate` and the answer functions do question by question."""
    from train.bundled_data.retrieval_vqa import write_rows
    from train.retrieval.answers import exact_match, vqa_accuracy

    for split in ("train", "test"):  # the answers column alone: no choices
        task_rows = list(__import__("csv").DictReader(open(encyclopedia / f"{split}.csv", encoding="utf-8")))
        write_rows(tmp_path / f"{split}_open.csv", [{**row, "question_image": str(encyclopedia / row[
            "question_image"]), "documents": [{**doc, "image": str(encyclopedia / doc["image"])} for doc in json.loads(
                row["documents"])], "answers": json.loads(row["answers"])} for row in task_rows],
                   ("question_text", "question_image", "answers", "documents"))
    report = train_retriever_generator(TrainRetrieverGeneratorArguments(
        train_csv=str(tmp_path / "train_open.csv"), val_fraction=0.25, output_dir=str(tmp_path / "o"), **TINY_RUN))
    assert {"vqa_accuracy", "exact_match"} <= set(report["validation"]) and "accuracy" not in report["validation"]

    run_cli(evaluate_main, RetrieverGeneratorEvaluateArguments,
            argv=["--model", str(tmp_path / "o"), "--csv", str(tmp_path / "test_open.csv"), "--n_docs", "2"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = RetrieverGeneratorForMultipleChoice.from_pretrained(tmp_path / "o").eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(tmp_path / "o")
    task = load_retrieval_task(tmp_path / "test_open.csv").searching(model.retriever.document_index.all_documents())
    model.index_corpus(task.corpus, processor)
    vqa, exact = [], []
    for example in task.examples:
        answer = model.generate(processor, example.question, example.image, n_docs=2, max_new_tokens=16,
                                do_sample=False)
        vqa.append(vqa_accuracy(answer, example.answers))
        exact.append(exact_match(answer, example.answers))
    assert result["n"] == 16 and "accuracy" not in result
    assert result["vqa_accuracy"] == pytest.approx(np.mean(vqa)) and result["exact_match"] == pytest.approx(
        np.mean(exact))

    # Repeated reference answers count: a model saying each question's most common answer scores 1.
    said = iter([example.target_answer for example in task.examples])
    model.generate = lambda *args, **kwargs: next(said)
    perfect = evaluate_retriever_generator(model, processor, task, "none")
    assert perfect["vqa_accuracy"] == 1.0 and perfect["exact_match"] == 1.0
