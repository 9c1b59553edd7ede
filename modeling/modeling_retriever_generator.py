"""Retriever-generator for multiple-choice visual question answering, in the manner of transformers' RAG.

`RetrieverGeneratorForMultipleChoice` holds a `MultimodalRetrieverModel` (with its document index) and an
image-text-to-text generator (SigPhi by default; anything `AutoModelForImageTextToText` builds, such as Mllama).
To answer, it retrieves the top `n_docs` documents for the question and its image, shows them to the generator
(text documents as text, image documents as extra images, see `RetrieverGeneratorProcessor`) and scores every
answer choice by the generator's log-likelihood of it; the best-scoring choice is the predicted label. Scoring
choices rather than parsing generated text means the answer is always one of the choices, and it gives a
proper distribution over them for free.

A saved retriever-generator is a folder with the composite (`config.json` + all weights, loadable with
`AutoModel`; `AutoProcessor` gives the `RetrieverGeneratorProcessor`) and `retriever/` and `generator/`
subfolders, each a complete model + processor folder of its own.
"""

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForImageTextToText, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MultipleChoiceModelOutput

from configuration.configuration_retriever_generator import RetrieverGeneratorConfig
from processing.processing_retriever_generator import IGNORE_INDEX, RetrieverGeneratorProcessor

from .modeling_retriever import HUB_KWARGS, MultimodalRetrieverModel
from .modeling_sigphi import SigPhiForConditionalGeneration
from .self_contained_saving import SelfContainedSaveMixin

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
class MultipleChoicePrediction:
    """One question's answer: the chosen index, every choice's log-likelihood, and the documents read."""

    label: int
    choice_scores: torch.Tensor  # (num_choices,)
    documents: list[dict]


class RetrieverGeneratorPreTrainedModel(SelfContainedSaveMixin, PreTrainedModel):
    config_class = RetrieverGeneratorConfig
    config: RetrieverGeneratorConfig
    base_model_prefix = "retriever_generator"
    input_modalities = ("image", "text")
    _supports_flash_attn = True
    _supports_sdpa = True
    extra_auto_classes = {"AutoModel": "RetrieverGeneratorForMultipleChoice",
                          "AutoProcessor": "RetrieverGeneratorProcessor"}


class RetrieverGeneratorForMultipleChoice(RetrieverGeneratorPreTrainedModel):
    """Retrieves documents for an image + question, then picks the answer choice the generator finds likeliest."""

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
        generator_type = PreTrainedConfig.get_config_dict(generator_pretrained_model_name_or_path)[0]["model_type"]
        generator = generator_class(generator_type).from_pretrained(generator_pretrained_model_name_or_path,
                                                                    **generator_kwargs)
        config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config,
                                                                           **config_kwargs)
        return cls(config, retriever=retriever, generator=generator)

    def get_input_embeddings(self) -> nn.Module:
        return self.generator.get_input_embeddings()

    def choice_log_likelihoods(self, choice_labels: torch.LongTensor, **generator_inputs) -> torch.Tensor:
        """Log-likelihood of each sequence's answer tokens: (n, seq) `choice_labels` (-100 outside the answer)
        with the generator's inputs for those n sequences -> (n,)."""
        logits = self.generator(**generator_inputs).logits  # (n, seq, vocab)
        targets = choice_labels[:, 1:]  # the token each position predicts
        scored = targets != IGNORE_INDEX
        token_log_probs = logits[:, :-1][scored].float().log_softmax(-1)  # (n_answer_tokens, vocab)
        per_token = token_log_probs.gather(-1, targets[scored][:, None]).squeeze(-1)
        rows = torch.arange(len(targets), device=targets.device)[:, None].expand_as(targets)[scored]
        return torch.zeros(len(targets), device=per_token.device).index_add(0, rows, per_token)

    def forward(self, choice_labels: torch.LongTensor, labels: torch.LongTensor | None = None,
                num_choices: int | None = None, **generator_inputs) -> MultipleChoiceModelOutput:
        r"""
        choice_labels (`torch.LongTensor` of shape `(batch_size * num_choices, sequence_length)`):
            Input ids at the answer-choice tokens, -100 elsewhere, as `RetrieverGeneratorProcessor.choice_inputs`
            makes them; rows are the choices of each question in turn.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Index of the right choice; gives a cross-entropy loss over the choices.
        num_choices (`int`, *optional*):
            Choices per question (default: all rows are one question's choices).
        """
        scores = self.choice_log_likelihoods(choice_labels, **generator_inputs)
        logits = scores.view(-1, num_choices or len(scores))  # (batch_size, num_choices)
        loss = nn.functional.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def retrieve(self, processor: RetrieverGeneratorProcessor, questions: list[str], images: list | None = None,
                 n_docs: int | None = None) -> tuple[torch.Tensor, torch.LongTensor, list[list[dict]]]:
        """(scores, ids) (n_questions, n_docs) and the documents themselves, from the retriever's index."""
        query_embeds = self.retriever.embed_queries(questions, images, processor.retriever_processor)
        scores, ids = self.retriever.retrieve(query_embeds, n_docs or self.config.n_docs)
        return scores, ids, [self.retriever.document_index.documents(row) for row in ids.tolist()]

    @torch.no_grad()
    def predict(self, processor: RetrieverGeneratorProcessor, question: str, image, answer_choices: list[str],
                documents: list[dict] | None = None, n_docs: int | None = None) -> MultipleChoicePrediction:
        """Answer one question: read `documents` if given (`[]` for none), else the top `n_docs` retrieved."""
        if documents is None:
            documents = self.retrieve(processor, [question], [image], n_docs)[2][0]
        inputs = processor.choice_inputs(question, image, documents, answer_choices, self.config.document_template)
        scores = self.choice_log_likelihoods(**inputs.to(self.generator.device))
        return MultipleChoicePrediction(label=int(scores.argmax()), choice_scores=scores.cpu(), documents=documents)

    @torch.no_grad()
    def generate(self, processor: RetrieverGeneratorProcessor, question: str, image=None,
                 documents: list[dict] | None = None, n_docs: int | None = None, **generate_kwargs) -> str:
        """A free-form answer to one question from retrieved (or the given) documents."""
        if documents is None:
            documents = self.retrieve(processor, [question], [image], n_docs)[2][0]
        inputs = processor.generation_inputs(question, image, documents, self.config.document_template)
        inputs = inputs.to(self.generator.device)
        output = self.generator.generate(**inputs, **generate_kwargs)
        tokenizer = processor.generator_processor.tokenizer
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save `retriever/` (with its index) and `generator/` as stand-alone folders, then the composite."""
        self.retriever.save_pretrained(os.path.join(save_directory, "retriever"))
        self.generator.save_pretrained(os.path.join(save_directory, "generator"))
        super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        subfolder = os.path.join(kwargs.get("subfolder", ""), "retriever")
        model.retriever.locate_document_index(pretrained_model_name_or_path, subfolder=subfolder,
                                              **{key: kwargs[key] for key in HUB_KWARGS if key in kwargs})
        return model


__all__ = ["MultipleChoicePrediction", "RetrieverGeneratorForMultipleChoice", "RetrieverGeneratorPreTrainedModel"]
