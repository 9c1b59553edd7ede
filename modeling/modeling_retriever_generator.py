"""Retriever-generator for multiple-choice visual question answering, marginalising over documents like
transformers' `RagSequenceForGeneration`.

`RetrieverGeneratorForMultipleChoice` holds a `MultimodalRetrieverModel` (with its document index) and an
image-text-to-text generator (SigPhi by default; anything `AutoModelForImageTextToText` builds, such as Mllama).
To answer, it retrieves the top `n_docs` documents for the question and its image, reads **each document in its
own sequence** (a batch of `n_docs` prompts: text documents as text, image documents as extra images, see
`RetrieverGeneratorProcessor`) and scores every answer choice by the marginal likelihood

    log p(choice | q) = log sum_k softmax(doc_scores / tau)_k * p(choice | question, image, document_k)

where `doc_scores` are the retriever's logits for the `n_docs` documents (RAG's `doc_scores`; RAG's `get_nll`
adds the document log-posterior once per sequence and takes a `logsumexp` over documents, as here). Outputs keep
the per-document choice scores and the document posterior, so a user sees which document decided. Scoring
choices rather than parsing generated text means the answer is always one of the choices. With
`marginalize=False` the documents are pasted into one prompt instead (the older layout).

Scoring (`choice_scoring.ChoiceScoringMixin`): each question+document prompt is encoded once, with its KV cache
kept for every choice's tokens; `scoring="pairs"` keeps the reference layout the cached path is checked against.

A saved retriever-generator is a folder whose `retriever/` and `generator/` subfolders each hold a complete model
+ processor (and the retriever its document index); the top level holds the composite `config.json` and code, not
a second copy of the weights. `AutoModel.from_pretrained(folder, trust_remote_code=True)` assembles the composite
from the subfolders. Folders saved with every weight at the top level as well (the older layout) still load.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MultipleChoiceModelOutput

from configuration.configuration_retriever_generator import RetrieverGeneratorConfig
from processing.processing_retriever_generator import RetrieverGeneratorProcessor

from .choice_scoring import ChoiceScoringMixin, marginalize
from .modeling_retriever import HUB_KWARGS, MultimodalRetrieverModel
from .model_card import build_model_card
from .modeling_sigphi import SigPhiForConditionalGeneration
from .self_contained_saving import CARD_KWARGS, UPLOAD_KWARGS, SelfContainedSaveMixin, push_folder_to_hub

logger = logging.getLogger(__name__)
WEIGHT_FILE_PREFIXES = ("model.safetensors", "model-", "pytorch_model")

PROJECT_GENERATORS = {"sigphi": SigPhiForConditionalGeneration}


def generator_class(model_type: str) -> type:
    """This project's generator class for `model_type`, else transformers' `AutoModelForImageTextToText`.

    Looked up by name because a Hub user's process has not registered the project's types with the Auto classes.
    """
    return PROJECT_GENERATORS.get(model_type, AutoModelForImageTextToText)


def build_generator(config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised generator for `config`."""
    model_class = generator_class(config.model_type)
    return model_class.from_config(config) if model_class is AutoModelForImageTextToText else model_class(config)


@dataclass
class RetrieverGeneratorOutput(MultipleChoiceModelOutput):
    r"""
    logits (`(batch_size, num_choices)`): each choice's score, `log sum_k p(d_k | q) p(choice | q, d_k)` when
        marginalising (the log-likelihood with one document or none).
    doc_choice_scores (`(batch_size, n_docs, num_choices)`): `log p(choice | question, image, document_k)` (the
        mean per token with `length_normalize`).
    doc_scores (`(batch_size, n_docs)`): the retriever's scores of the documents read, as given.
    doc_posterior (`(batch_size, n_docs)`): `softmax(doc_scores / doc_temperature)`, the weight of each document.
    """

    doc_choice_scores: torch.Tensor | None = None
    doc_scores: torch.Tensor | None = None
    doc_posterior: torch.Tensor | None = None


@dataclass
class MultipleChoicePrediction:
    """One question's answer: the chosen index, every choice's (marginal) score, the documents read, and per
    document its choice scores and posterior weight (which document decided)."""

    label: int
    choice_scores: torch.Tensor  # (num_choices,)
    documents: list[dict]
    doc_choice_scores: torch.Tensor | None = None  # (n_docs, num_choices)
    doc_posterior: torch.Tensor | None = None  # (n_docs,)
    doc_scores: torch.Tensor | None = None  # (n_docs,)
    corpus: str = "the documents given"  # where the documents came from: the index searched, "name (n documents)"


class RetrieverGeneratorPreTrainedModel(SelfContainedSaveMixin, PreTrainedModel):
    config_class = RetrieverGeneratorConfig
    config: RetrieverGeneratorConfig
    base_model_prefix = "retriever_generator"
    input_modalities = ("image", "text")
    _supports_flash_attn = True
    _supports_sdpa = True
    extra_auto_classes = {"AutoModel": "RetrieverGeneratorForMultipleChoice",
                          "AutoProcessor": "RetrieverGeneratorProcessor"}


class RetrieverGeneratorForMultipleChoice(ChoiceScoringMixin, RetrieverGeneratorPreTrainedModel):
    """Retrieves documents for an image + question, reads each, and picks the choice with the highest marginal
    likelihood over the documents."""

    def __init__(self, config: RetrieverGeneratorConfig, retriever: MultimodalRetrieverModel | None = None,
                 generator: PreTrainedModel | None = None):
        super().__init__(config)
        self.retriever = retriever if retriever is not None else MultimodalRetrieverModel(config.retriever)
        self.generator = generator if generator is not None else build_generator(config.generator)
        self.post_init()

    @classmethod
    def from_retriever_generator_pretrained(cls, retriever_pretrained_model_name_or_path: str | os.PathLike,
                                            generator_pretrained_model_name_or_path: str | os.PathLike,
                                            **kwargs) -> "RetrieverGeneratorForMultipleChoice":
        """Join a saved retriever (with its document index) and a saved generator, like RAG's
        `from_pretrained_question_encoder_generator`. `kwargs` starting with `retriever_`/`generator_` go to that
        model's `from_pretrained`; the rest (e.g. `n_docs`, `document_template`) to the config."""
        retriever_kwargs = {k.removeprefix("retriever_"): v for k, v in kwargs.items() if k.startswith("retriever_")}
        generator_kwargs = {k.removeprefix("generator_"): v for k, v in kwargs.items() if k.startswith("generator_")}
        config_kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("retriever_", "generator_"))}
        retriever = MultimodalRetrieverModel.from_pretrained(retriever_pretrained_model_name_or_path,
                                                             **retriever_kwargs)
        generator_type = PreTrainedConfig.get_config_dict(generator_pretrained_model_name_or_path,
                                                          subfolder=generator_kwargs.get("subfolder", ""))[0]
        generator = generator_class(generator_type["model_type"]).from_pretrained(
            generator_pretrained_model_name_or_path, **generator_kwargs)
        config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config,
                                                                           **config_kwargs)
        return cls(config, retriever=retriever, generator=generator)

    def get_input_embeddings(self) -> nn.Module:
        return self.generator.get_input_embeddings()

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                choice_ids: torch.LongTensor | None = None, choice_attention_mask: torch.Tensor | None = None,
                n_docs: int | None = None, doc_scores: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, choice_labels: torch.LongTensor | None = None,
                num_choices: int | None = None, length_normalize: bool | None = None,
                **generator_inputs) -> RetrieverGeneratorOutput:
        r"""
        Two input layouts, both from `RetrieverGeneratorProcessor`:

        - `marginal_inputs` (default): `input_ids`/`attention_mask` (and image tensors) of `batch * n_docs`
          left-padded question+document prompts, `choice_ids`/`choice_attention_mask` of `batch * num_choices`
          answer choices. Scored with one cached prompt pass (`score_choices`).
        - `choice_inputs` / `pair_inputs`: whole sequences with `choice_labels` (input ids at the answer tokens,
          -100 elsewhere), rows ordered question, document, choice; give `num_choices` (and `n_docs` for
          `pair_inputs`; 1 for `choice_inputs`, whose prompt holds every document).

        doc_scores (`torch.Tensor` of shape `(batch_size, n_docs)`, *optional*):
            The retriever's logits of the documents read (RAG's `doc_scores`); gradients flow through them into
            the retriever when they were computed with grad. None: every document weighs the same.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Index of the right choice. The loss is the cross-entropy over the choices' marginal scores plus the
            marginal negative log-likelihood of the right choice, `-log sum_k p(d_k|q) p(y|q,d_k)` (RAG-Sequence's
            loss), averaged over the batch.
        length_normalize (`bool`, *optional*): mean instead of sum of the answer tokens' log-probabilities
            (default: the config's).
        """
        length_normalize = self.config.length_normalize if length_normalize is None else length_normalize
        if choice_labels is not None:
            n_docs = n_docs or 1
            scores = self.choice_log_likelihoods(choice_labels, length_normalize, input_ids=input_ids,
                                                 attention_mask=attention_mask, **generator_inputs)
            doc_choice_scores = scores.view(-1, n_docs, num_choices or len(scores) // n_docs)
        else:
            n_docs = n_docs or self.config.n_docs
            doc_choice_scores = self.score_choices(input_ids, attention_mask, choice_ids, choice_attention_mask,
                                                   n_docs, length_normalize, **generator_inputs)
        logits, doc_posterior = marginalize_scores(doc_choice_scores, doc_scores, self.config.doc_temperature)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = (nn.functional.cross_entropy(logits, labels)
                    - logits.gather(-1, labels[:, None]).mean())
        return RetrieverGeneratorOutput(loss=loss, logits=logits, doc_choice_scores=doc_choice_scores,
                                        doc_scores=doc_scores, doc_posterior=doc_posterior)

    # Retrieval and answering -------------------------------------------------------------------------------

    @torch.no_grad()
    def retrieve(self, processor: RetrieverGeneratorProcessor, questions: list[str], images: list | None = None,
                 n_docs: int | None = None) -> tuple[torch.Tensor, torch.LongTensor, list[list[dict]]]:
        """(doc_scores, ids), each (n_questions, n_docs), and the documents themselves, from the retriever's index.

        `doc_scores` are the retriever's logits (cosine similarity times its learned scale), the scores the
        document posterior is made of. An id of -1 (the index found fewer documents than asked) has no document:
        it is left out of that question's list, and logged.
        """
        query_embeds = self.retriever.embed_queries(questions, images, processor.retriever_processor)
        scores, ids = self.retriever.retrieve(query_embeds, n_docs or self.config.n_docs)
        if (ids < 0).any():
            logger.warning("The document index returned %d fewer documents than asked (FAISS id -1); they are "
                           "skipped.", int((ids < 0).sum()))
        doc_scores = scores * self.retriever.logit_scale.detach().exp().cpu().float()
        return doc_scores, ids, [self.retriever.document_index.documents(row) for row in ids.tolist()]

    @torch.no_grad()
    def predict_batch(self, processor: RetrieverGeneratorProcessor, questions: list[str], images: list,
                      answer_choices: list[list[str]], documents: list[list[dict]],
                      doc_scores: torch.Tensor | None = None, marginalize: bool | None = None,
                      length_normalize: bool | None = None, scoring: str = "cached") -> list[MultipleChoicePrediction]:
        """Answer several questions from the given documents (the same number per question; `[]` for none).

        `doc_scores` (n_questions, n_docs): the retriever's logits of those documents (None: equal weights, e.g.
        gold documents). `marginalize=False` pastes each question's documents into one prompt. `scoring`:
        `"cached"` (one prompt pass per document, choices on its KV cache) or `"pairs"` (one whole sequence per
        document x choice; the slower reference).
        """
        marginalize = self.config.marginalize if marginalize is None else marginalize
        device = self.generator.device
        if not marginalize:
            predictions = []
            for question, image, choices, docs in zip(questions, images, answer_choices, documents):
                inputs = processor.choice_inputs(question, image, docs, choices, self.config.document_template)
                scores = self.choice_log_likelihoods(length_normalize=length_normalize, **inputs.to(device))
                predictions.append(MultipleChoicePrediction(int(scores.argmax()), scores.cpu(), docs))
            return predictions
        read = [[*docs] if docs else [None] for docs in documents]  # no documents: one prompt without any
        if scoring == "pairs":
            outputs = []
            for question, image, choices, docs in zip(questions, images, answer_choices, read):
                inputs = processor.pair_inputs(question, image, docs, choices, self.config.document_template)
                outputs.append(self(**inputs.to(device), n_docs=len(docs), num_choices=len(choices),
                                    length_normalize=length_normalize).doc_choice_scores)
            doc_choice_scores = torch.cat(outputs)
        elif scoring == "cached":
            inputs = processor.marginal_inputs(questions, images, read, answer_choices, self.config.document_template)
            doc_choice_scores = self.score_choices(**inputs.to(device), length_normalize=length_normalize)
        else:
            raise ValueError(f"scoring must be 'cached' or 'pairs', got {scoring!r}")
        if doc_scores is not None:
            doc_scores = torch.as_tensor(doc_scores, dtype=torch.float32)
        logits, posterior = marginalize_scores(doc_choice_scores.cpu(), doc_scores, self.config.doc_temperature)
        return [MultipleChoicePrediction(
            label=int(logits[b].argmax()), choice_scores=logits[b], documents=documents[b],
            doc_choice_scores=doc_choice_scores[b].cpu(), doc_posterior=posterior[b],
            doc_scores=None if doc_scores is None else doc_scores[b]) for b in range(len(questions))]

    @torch.no_grad()
    def predict(self, processor: RetrieverGeneratorProcessor, question: str, image, answer_choices: list[str],
                documents: list[dict] | None = None, n_docs: int | None = None, doc_scores=None,
                marginalize: bool | None = None, length_normalize: bool | None = None,
                scoring: str = "cached") -> MultipleChoicePrediction:
        """Answer one question: from `documents` if given (`[]` for none; weighted by `doc_scores` if given, else
        alike), else from the top `n_docs` retrieved, weighted by the retriever's scores."""
        corpus = MultipleChoicePrediction.corpus
        if documents is None:
            scores, ids, retrieved = self.retrieve(processor, [question], [image], n_docs)
            documents, doc_scores = retrieved[0], scores[0][ids[0] >= 0][None]
            corpus = self.retriever.document_index.describe()
        elif doc_scores is not None:
            doc_scores = torch.as_tensor(doc_scores, dtype=torch.float32).reshape(1, -1)
        prediction = self.predict_batch(processor, [question], [image], [answer_choices], [documents], doc_scores,
                                        marginalize, length_normalize, scoring)[0]
        prediction.corpus = corpus
        return prediction

    def index_corpus(self, documents: list[dict], processor: RetrieverGeneratorProcessor, name: str = "corpus",
                     factory: str = "Flat", search_parameters: str | None = None, **large_corpus):
        """Make `documents` (`{"text": str | None, "image": PIL.Image | None}`) the corpus `predict` and `generate`
        search, replacing the index saved with the model (no retraining: the retriever embeds them as they are).
        `name` is what predictions report they searched; `factory` and `search_parameters` choose the FAISS index;
        `large_corpus` (`embeddings_path`, `index_train_size`, `on_disk`, `chunk_size`) builds it for a corpus
        bigger than memory, as `MultimodalRetrieverModel.build_document_index` says."""
        return self.retriever.build_document_index(documents, processor.retriever_processor, factory,
                                                   search_parameters, name=name, **large_corpus)

    @torch.no_grad()
    def generate(self, processor: RetrieverGeneratorProcessor, question: str, image=None,
                 documents: list[dict] | None = None, n_docs: int | None = None, doc_scores=None,
                 marginalize: bool | None = None, **generate_kwargs) -> str:
        """A free-form answer, RAG-Sequence style: generate an answer from each document in its own sequence,
        then re-score every distinct candidate by the marginal likelihood over all the documents and return the
        best. `marginalize=False`: one answer from the documents pasted into one prompt."""
        if documents is None:
            scores, ids, retrieved = self.retrieve(processor, [question], [image], n_docs)
            documents, doc_scores = retrieved[0], scores[0][ids[0] >= 0]
        tokenizer = getattr(processor.generator_processor, "tokenizer", processor.generator_processor)
        if not (self.config.marginalize if marginalize is None else marginalize):
            inputs = processor.generation_inputs(question, image, documents, self.config.document_template)
            inputs = inputs.to(self.generator.device)
            output = self.generator.generate(**inputs, **generate_kwargs)
            return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        read = documents or [None]
        inputs = processor.generation_batch(question, image, read, self.config.document_template)
        inputs = inputs.to(self.generator.device)
        output = self.generator.generate(**inputs, **generate_kwargs)
        answers = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        candidates = list(dict.fromkeys(answer.strip() for answer in answers if answer.strip()))
        if len(candidates) <= 1:
            return candidates[0] if candidates else answers[0]
        prediction = self.predict(processor, question, image, candidates, documents, doc_scores=doc_scores,
                                  marginalize=True)
        return candidates[prediction.label]

    # Saving and loading ------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """Save `retriever/` (with its index) and `generator/` as stand-alone folders, then the composite's config
        and code at the top level, without a second copy of the weights (`from_pretrained` assembles the
        composite from the subfolders). With `push_to_hub=True` the finished folder is uploaded with a card."""
        upload_kwargs = {key: kwargs.pop(key) for key in UPLOAD_KWARGS if key in kwargs}
        card_kwargs = {key: kwargs.pop(key) for key in CARD_KWARGS if key in kwargs}
        repo_id = kwargs.pop("repo_id", Path(save_directory).name)
        self.retriever.save_pretrained(os.path.join(save_directory, "retriever"), *args, **kwargs)
        self.generator.save_pretrained(os.path.join(save_directory, "generator"), *args, **kwargs)
        self.config.weights_in_subfolders = True
        super().save_pretrained(save_directory, *args, state_dict={}, **kwargs)
        for name in os.listdir(save_directory):
            if name.startswith(WEIGHT_FILE_PREFIXES) and os.path.isfile(os.path.join(save_directory, name)):
                os.remove(os.path.join(save_directory, name))
        if push_to_hub and kwargs.get("is_main_process", True):
            card = build_model_card(self.config, repo_id, save_directory, **card_kwargs)
            card.save(os.path.join(save_directory, "README.md"))
            return push_folder_to_hub(save_directory, repo_id, token=kwargs.get("token"), **upload_kwargs)
        return None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """The saved composite: assembled from `retriever/` and `generator/` (the weights' only copy), or, for
        folders of the older layout, read from the top-level weights. The document index is read when first used."""
        hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
        subfolder = kwargs.get("subfolder", "")
        config = kwargs.get("config")
        if not isinstance(config, RetrieverGeneratorConfig):
            config = RetrieverGeneratorConfig.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder,
                                                              **hub_kwargs)
        if not config.weights_in_subfolders:  # older layout: every weight at the top level too
            saved = PreTrainedConfig.get_config_dict(pretrained_model_name_or_path, subfolder=subfolder,
                                                     **hub_kwargs)[0]
            if "n_docs" not in saved:  # saved when the default was one document
                config.n_docs = 1
            kwargs["config"] = config
            model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            model.retriever.locate_document_index(pretrained_model_name_or_path,
                                                  subfolder=os.path.join(subfolder, "retriever"), **hub_kwargs)
            return model
        part_kwargs = {key: value for key, value in kwargs.items()
                       if key not in ("config", "subfolder", "trust_remote_code", "_from_auto", "_from_pipeline")}
        retriever = MultimodalRetrieverModel.from_pretrained(
            pretrained_model_name_or_path, subfolder=os.path.join(subfolder, "retriever"), **part_kwargs)
        model_class = generator_class(config.generator.model_type)
        if model_class is AutoModelForImageTextToText and "trust_remote_code" in kwargs:
            part_kwargs["trust_remote_code"] = kwargs["trust_remote_code"]
        generator = model_class.from_pretrained(pretrained_model_name_or_path,
                                                subfolder=os.path.join(subfolder, "generator"), **part_kwargs)
        config.retriever, config.generator = retriever.config, generator.config
        return cls(config, retriever=retriever, generator=generator).eval()


marginalize_scores = marginalize

__all__ = ["MultipleChoicePrediction", "RetrieverGeneratorForMultipleChoice", "RetrieverGeneratorOutput",
           "RetrieverGeneratorPreTrainedModel", "marginalize"]
