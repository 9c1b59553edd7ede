"""Configuration of the retriever-generator: a multimodal retriever and an image-text-to-text generator.

Composite like transformers' `RagConfig` (sub-configs `retriever` and `generator`, resolved from their
`model_type`), so a saved folder rebuilds both models from its `config.json` alone. The project's own model types
are resolved here rather than through `AutoConfig`, because a Hub user's process has not registered them.
"""

from transformers import AutoConfig, PreTrainedConfig

from .configuration_retriever import MultimodalRetrieverConfig
from .configuration_sigphi import SigPhiConfig, resolve_sub_config

PROJECT_CONFIGS = {"multimodal_retriever": MultimodalRetrieverConfig, "sigphi": SigPhiConfig}
# Also defined in processing_retriever_generator.py (see there why the two files cannot share one definition).
DOCUMENT_PLACEHOLDER = "{document}"


class RetrieverGeneratorConfig(PreTrainedConfig):
    r"""
    Configuration of [`RetrieverGeneratorForMultipleChoice`].

    Args:
        retriever (`MultimodalRetrieverConfig` or `dict`): the retriever.
        generator (`PreTrainedConfig` or `dict`): any image-text-to-text model (SigPhi by default; `mllama` for
            Llama-3.2-Vision).
        n_docs (`int`): how many retrieved documents the generator reads (RAG's `n_docs`).
        document_template (`str`): how each document is shown to the generator; `{document}` is replaced by a
            text document's text, or by the image of an image document.
        marginalize (`bool`): read each document in its own sequence and score a choice by
            `log sum_k softmax(doc_scores / doc_temperature)_k * p(choice | question, image, document_k)`
            (RAG-Sequence). False pastes the documents into one prompt instead.
        doc_temperature (`float`): temperature `tau` of the document posterior; `doc_scores` are the retriever's
            logits (scaled cosine similarities).
        length_normalize (`bool`): score a choice by the mean of its tokens' log-probabilities instead of their
            sum (the log-likelihood). Off by default.
        weights_in_subfolders (`bool`): set when saving: the weights live in `retriever/` and `generator/` only.
    """

    model_type = "retriever_generator"
    sub_configs = {"retriever": MultimodalRetrieverConfig, "generator": AutoConfig}

    retriever: dict | PreTrainedConfig | None = None
    generator: dict | PreTrainedConfig | None = None
    n_docs: int = 5
    document_template: str = "Document: {document}\n"
    marginalize: bool = True
    doc_temperature: float = 1.0
    length_normalize: bool = False
    weights_in_subfolders: bool = False

    def __post_init__(self, **kwargs):
        self.retriever = resolve_sub_config(self.retriever, "multimodal_retriever", PROJECT_CONFIGS)
        self.generator = resolve_sub_config(self.generator, "sigphi", PROJECT_CONFIGS)
        if self.document_template.count(DOCUMENT_PLACEHOLDER) != 1:
            raise ValueError(f"document_template must contain {DOCUMENT_PLACEHOLDER} exactly once, "
                             f"got {self.document_template!r}")
        if self.n_docs < 1:
            raise ValueError(f"n_docs must be at least 1, got {self.n_docs}")
        if self.doc_temperature <= 0:
            raise ValueError(f"doc_temperature must be positive, got {self.doc_temperature}")
        super().__post_init__(**kwargs)

    @classmethod
    def from_retriever_generator_configs(cls, retriever_config: PreTrainedConfig, generator_config: PreTrainedConfig,
                                         **kwargs) -> "RetrieverGeneratorConfig":
        return cls(retriever=retriever_config.to_dict(), generator=generator_config.to_dict(), **kwargs)


__all__ = ["RetrieverGeneratorConfig"]
