"""Processors of the retriever-generator: the retriever's (queries and documents to tensors) and the bundle of
the retriever's and the generator's processors that builds the generator's prompts from retrieved documents.

`MultimodalRetrieverProcessor` follows ColPali's processor: `process_queries` and `process_documents` instead of
one `__call__`, because a query (question + optional image) and a batch of mixed text and image documents need
different tensors. `RetrieverGeneratorProcessor` is a plain bundle saved as two subfolders, like transformers'
`RagTokenizer`: each half stays loadable with `AutoProcessor` on its own.

The generator's prompt is chat-formatted by the generator's own processor, so the same code serves SigPhi and
Llama-3.2-Vision (Mllama): the user turn holds the documents (text documents as text, image documents as extra
images, each wrapped in the document template), then the question's image and the question.
"""

import os

import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor, BatchFeature, ProcessorMixin, SiglipImageProcessor

from .processing_sigphi import IGNORE_INDEX, to_rgb

# Also defined in configuration_retriever_generator.py, which validates templates with it: a processing file cannot
# import a configuration file (the retriever's processor is saved, without the model's import rewrite, into a folder
# that has no configuration_retriever_generator.py), nor the reverse without breaking a config saved on its own.
# tests/test_train_layout.py checks that the two are equal.
DOCUMENT_PLACEHOLDER = "{document}"


def assistant_message(answer: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


class MultimodalRetrieverProcessor(ProcessorMixin):
    r"""
    Turns queries and documents into [`MultimodalRetrieverModel`] inputs.

    Args:
        image_processor: resize + normalise to the image tower's input (any transformers image processor: SigLIP's,
            SigLIP 2's, CLIP's).
        tokenizer (`PreTrainedTokenizerBase`): the text tower's tokenizer.
        max_length (`int`): the text tower's context: a longer passage is cut into chunks of at most this many
            tokens (overlapping by a quarter), a longer question truncated.
        pad_to_max_length (`bool`): pad every text to `max_length` (SigLIP's text model was trained so, and its
            pooled output is the last position) instead of to the longest text of the batch.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = 64, pad_to_max_length: bool = False):
        self.max_length = max_length
        self.pad_to_max_length = pad_to_max_length
        super().__init__(image_processor, tokenizer)

    @classmethod
    def from_retriever_config(cls, tokenizer, config, **kwargs) -> "MultimodalRetrieverProcessor":
        """A processor whose image processor matches the timm image tower described by a
        `MultimodalRetrieverConfig`."""
        image_processor = SiglipImageProcessor(size={"height": config.image_size, "width": config.image_size},
                                               image_mean=list(config.image_mean), image_std=list(config.image_std))
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)

    @classmethod
    def from_dual_encoder(cls, pretrained_model_name_or_path: str, **kwargs) -> "MultimodalRetrieverProcessor":
        """The published processor of a dual encoder (`SiglipProcessor`, `CLIPProcessor`, ...) as a retriever
        processor: its image processor and tokenizer, texts padded to the text tower's full context for SigLIP."""
        published = AutoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **kwargs).get_text_config()
        return cls(image_processor=published.image_processor, tokenizer=published.tokenizer,
                   max_length=config.max_position_embeddings,
                   pad_to_max_length=config.model_type.startswith("siglip"))

    def _tokenize(self, texts: list[str]) -> dict:
        return self.tokenizer(texts, padding="max_length" if self.pad_to_max_length else "longest", truncation=True,
                              max_length=self.max_length, return_tensors="pt")

    def _image_inputs(self, images: list) -> dict:
        """`pixel_values` (n, ...) and whatever else the image processor makes, from PIL images of any mode."""
        return dict(self.image_processor([to_rgb(image) for image in images], return_tensors="pt"))

    def split_passage(self, text: str) -> list[str]:
        """`text` cut at word boundaries into chunks of at most `max_length` tokens (special tokens included), each
        overlapping the one before by a quarter of its words; a text that fits is one chunk."""
        words = text.split()
        budget = self.max_length - len(self.tokenizer("")["input_ids"])
        lengths = [len(ids) for ids in self.tokenizer([f" {word}" for word in words],
                                                      add_special_tokens=False)["input_ids"]] if words else []
        if sum(lengths) <= budget:
            return [text]
        chunks, start = [], 0
        while True:
            end, used = start, 0
            while end < len(words) and (end == start or used + lengths[end] <= budget):
                used, end = used + lengths[end], end + 1
            chunks.append(" ".join(words[start:end]))
            if end == len(words):
                return chunks
            start = max(start + 1, end - (end - start) // 4)

    def process_queries(self, texts: list[str], images: list | None = None) -> BatchFeature:
        """`input_ids`, `attention_mask` and, when any query has an image, the image inputs (a blank image fills the
        slot of a query without one) and `query_image_mask` (False for those blanks)."""
        features = dict(self._tokenize(texts))
        if images is not None and any(image is not None for image in images):
            blank = Image.new("RGB", (1, 1))
            features.update(self._image_inputs([blank if image is None else image for image in images]))
            features["query_image_mask"] = torch.tensor([image is not None for image in images])
        return BatchFeature(features)

    def process_documents(self, documents: list[dict]) -> BatchFeature:
        """Documents (`{"text": str | None, "image": PIL.Image | None}`) as chunks: a passage is cut into chunks
        (`split_passage`), each keeping its document's picture if it has one; a picture alone is one chunk.

        Returns `chunk_document_ids` (n_chunks,), `chunk_text_ids` / `chunk_image_ids` (n_chunks,): each chunk's row
        in `input_ids` / `attention_mask` (the chunks' texts) and in the image inputs (the documents' pictures), -1
        where it has none.
        """
        texts, images, text_ids, image_ids, document_ids = [], [], [], [], []
        for document_id, document in enumerate(documents):
            image_id = -1
            if document.get("image") is not None:
                image_id = len(images)
                images.append(document["image"])
            for piece in self.split_passage(document["text"]) if document.get("text") else [None]:
                text_ids.append(-1 if piece is None else len(texts))
                texts += [piece] if piece is not None else []
                image_ids.append(image_id)
                document_ids.append(document_id)
        features = {"chunk_document_ids": torch.tensor(document_ids), "chunk_text_ids": torch.tensor(text_ids),
                    "chunk_image_ids": torch.tensor(image_ids)}
        if texts:
            features.update(self._tokenize(texts))
        if images:
            features.update(self._image_inputs(images))
        return BatchFeature(features)


class RetrieverGeneratorProcessor:
    """The retriever's and the generator's processors, and the generator prompts built from documents.

    Saved as `retriever/` and `generator/` subfolders of a folder (the layout of a saved retriever-generator).
    """

    def __init__(self, retriever_processor: MultimodalRetrieverProcessor, generator_processor: ProcessorMixin):
        self.retriever_processor = retriever_processor
        self.generator_processor = generator_processor

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.retriever_processor.save_pretrained(os.path.join(save_directory, "retriever"))
        self.generator_processor.save_pretrained(os.path.join(save_directory, "generator"))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        **kwargs) -> "RetrieverGeneratorProcessor":
        """Both processors of a saved retriever-generator (`AutoProcessor.from_pretrained` on the folder ends here)."""
        return cls(AutoProcessor.from_pretrained(pretrained_model_name_or_path, subfolder="retriever", **kwargs),
                   AutoProcessor.from_pretrained(pretrained_model_name_or_path, subfolder="generator", **kwargs))

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """Nothing to do: the retriever-generator's `config.json` maps `AutoProcessor` to this class."""

    @staticmethod
    def conversation(question: str, image: Image.Image | None, documents: list[dict], document_template: str,
                     answer: str | None = None) -> tuple[list[dict], list[Image.Image]]:
        """Chat messages and the images they refer to, in order: documents, then the question's image and text.

        A text document is `document_template` with `{document}` replaced by its text; an image document is
        the template with an image in that place, followed by the document's text when it has one (a picture with
        its article).
        """
        before, after = document_template.split(DOCUMENT_PLACEHOLDER)
        content, images = [], []
        for document in documents:
            text = document.get("text")
            if document.get("image") is not None:
                content += [{"type": "text", "text": before}, {"type": "image"},
                            {"type": "text", "text": (f" {text}" if text else "") + after}]
                images.append(document["image"])
            else:
                content.append({"type": "text", "text": before + text + after})
        if image is not None:
            content.append({"type": "image"})
            images.append(image)
        content.append({"type": "text", "text": question})
        messages = [{"role": "user", "content": [item for item in content if item.get("text") != ""]}]
        if answer is not None:
            messages.append(assistant_message(answer))
        return messages, images

    def _process(self, texts: list[str], images: list[Image.Image]) -> BatchFeature:
        images = [[to_rgb(image) for image in images]] * len(texts) if images else None
        return self.generator_processor(text=texts, images=images, padding=True, padding_side="right",
                                        return_tensors="pt")

    def _process_prompts(self, prompts: list[str], images: list[list[Image.Image]]) -> BatchFeature:
        """One prompt per row, each with its own images, left-padded (the answer follows the last token)."""
        images = [[to_rgb(image) for image in row] for row in images] if any(images) else None
        return self.generator_processor(text=prompts, images=images, padding=True, padding_side="left",
                                        return_tensors="pt")

    def _choice_token_ids(self, prompt: str, choices: list[str], messages: list[dict]) -> list[list[int]]:
        """The tokens that follow `prompt` when each choice is the assistant's answer (its text and the end of the
        turn), checked to tokenize the same after the prompt as in the whole conversation."""
        tokenizer = getattr(self.generator_processor, "tokenizer", self.generator_processor)
        texts = [self.generator_processor.apply_chat_template(messages + [assistant_message(choice)])
                 for choice in choices]
        if not all(text.startswith(prompt) for text in texts):
            raise ValueError("The chat template renders an answer after something other than the generation prompt.")
        prompt_ids = tokenizer(prompt)["input_ids"]
        token_ids = tokenizer([text[len(prompt):] for text in texts], add_special_tokens=False)["input_ids"]
        for choice, ids, whole in zip(choices, token_ids, tokenizer(texts)["input_ids"]):  # one call per list
            if prompt_ids + ids != whole:
                raise ValueError("The answer choices change how the prompt is tokenized; end the prompt with a "
                                 "separator.")
            if not ids:
                raise ValueError(f"The answer choice {choice!r} renders to no tokens.")
        return token_ids

    def marginal_inputs(self, questions: list[str], images: list, documents: list[list[dict | None]],
                        choices: list[list[str]], document_template: str) -> BatchFeature:
        """Generator inputs that read every retrieved document in its own sequence (RAG-Sequence layout).

        `documents[b]` holds the `n_docs` documents of question `b` (the same number for every question; `None`
        stands for "no document": the prompt then holds the question alone) and `choices[b]` its answer choices
        (the same number for every question). Returns, left-padded, the prompts of the `batch * n_docs`
        question-document pairs (`input_ids`, `attention_mask`, the images' tensors), and `choice_ids` /
        `choice_attention_mask` (`batch * num_choices`, right-padded): the tokens of each answer choice (its text
        and the end of the turn), to be scored after each of its question's prompts.
        """
        n_docs, num_choices = len(documents[0]), len(choices[0])
        if any(len(row) != n_docs for row in documents) or any(len(row) != num_choices for row in choices):
            raise ValueError("Every question of a batch needs the same number of documents and of choices.")
        prompts, prompt_images, choice_ids = [], [], []
        for question, image, row, row_choices in zip(questions, images, documents, choices):
            for k, document in enumerate(row):
                messages, doc_images = self.conversation(question, image, [document] if document else [],
                                                         document_template)
                prompts.append(self.generator_processor.apply_chat_template(messages, add_generation_prompt=True))
                prompt_images.append(doc_images)
                if k == 0:
                    choice_ids += self._choice_token_ids(prompts[-1], row_choices, messages)
        inputs = self._process_prompts(prompts, prompt_images)
        length = max(len(ids) for ids in choice_ids)
        pad = getattr(self.generator_processor, "tokenizer", self.generator_processor).pad_token_id or 0
        inputs["choice_ids"] = torch.tensor([ids + [pad] * (length - len(ids)) for ids in choice_ids])
        inputs["choice_attention_mask"] = torch.tensor([[1] * len(ids) + [0] * (length - len(ids))
                                                        for ids in choice_ids])
        inputs["n_docs"] = n_docs
        return inputs

    def pair_inputs(self, question: str, image: Image.Image | None, documents: list[dict | None],
                    choices: list[str], document_template: str) -> BatchFeature:
        """The per-pair layout (one whole sequence per document x choice, document-major): `choice_inputs` for
        each document in turn, in one right-padded batch. The reference the cached scoring is checked against."""
        texts, images, prompts = [], [], []
        for document in documents:
            messages, doc_images = self.conversation(question, image, [document] if document else [],
                                                     document_template)
            prompt = self.generator_processor.apply_chat_template(messages, add_generation_prompt=True)
            prompts.append(self._process_prompts([prompt], [doc_images])["input_ids"].shape[1])
            for choice in choices:
                texts.append(self.generator_processor.apply_chat_template(messages + [assistant_message(choice)]))
                images.append(doc_images)
        images = [[to_rgb(image) for image in row] for row in images] if any(images) else None
        inputs = self.generator_processor(text=texts, images=images, padding=True, padding_side="right",
                                          return_tensors="pt")
        choice_labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
        for row, n_prompt in enumerate(torch.tensor(prompts).repeat_interleave(len(choices)).tolist()):
            choice_labels[row, :n_prompt] = IGNORE_INDEX
        inputs["choice_labels"] = choice_labels
        return inputs

    def generation_batch(self, question: str, image: Image.Image | None, documents: list[dict | None],
                         document_template: str) -> BatchFeature:
        """Left-padded generator inputs of one prompt per document, each ending where the answer starts."""
        prompts, images = [], []
        for document in documents:
            messages, doc_images = self.conversation(question, image, [document] if document else [],
                                                     document_template)
            prompts.append(self.generator_processor.apply_chat_template(messages, add_generation_prompt=True))
            images.append(doc_images)
        return self._process_prompts(prompts, images)

    def generation_inputs(self, question: str, image: Image.Image | None, documents: list[dict],
                          document_template: str) -> BatchFeature:
        """Generator inputs of one prompt ending where the assistant's answer starts."""
        messages, images = self.conversation(question, image, documents, document_template)
        prompt = self.generator_processor.apply_chat_template(messages, add_generation_prompt=True)
        return self._process([prompt], images)

    def choice_inputs(self, question: str, image: Image.Image | None, documents: list[dict], choices: list[str],
                      document_template: str) -> BatchFeature:
        """Generator inputs of `len(choices)` sequences, prompt + one answer choice each, right-padded, with
        `choice_labels`: the input ids at the choice's tokens (its text and the end of the turn), -100 elsewhere.
        """
        messages, images = self.conversation(question, image, documents, document_template)
        prompt = self.generator_processor.apply_chat_template(messages, add_generation_prompt=True)
        texts = [self.generator_processor.apply_chat_template(messages + [assistant_message(choice)])
                 for choice in choices]
        if not all(text.startswith(prompt) for text in texts):
            raise ValueError("The chat template renders an answer after something other than the generation prompt.")
        prompt_ids = self._process([prompt], images)["input_ids"][0]
        inputs = self._process(texts, images)
        n_prompt = len(prompt_ids)
        if not torch.equal(inputs["input_ids"][:, :n_prompt], prompt_ids.expand(len(choices), -1)):
            raise ValueError("The answer choices change how the prompt is tokenized; end the prompt with a separator.")
        choice_labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
        choice_labels[:, :n_prompt] = IGNORE_INDEX
        inputs["choice_labels"] = choice_labels
        return inputs


__all__ = ["MultimodalRetrieverProcessor", "RetrieverGeneratorProcessor"]
