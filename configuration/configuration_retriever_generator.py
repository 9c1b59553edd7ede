"""Configuration of the retriever-generator: a multimodal retriever and an image-text-to-text generator.

Composite like transformers' `RagConfig` (sub-configs `retriever` and `generator`, resolved from their
`model_type`), so a saved folder rebuilds both models from its `config.json` alone. The project's own model types
are resolved here rather than through `AutoConfig`, because a Hub user's process has not registered them.
"""

from transformers import PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration_retriever import MultimodalRetrieverConfig
from .configuration_sigphi import SigPhiConfig

PROJECT_CONFIGS = {"multimodal_retriever": MultimodalRetrieverConfig, "sigphi": SigPhiConfig}
DOCUMENT_PLACEHOLDER = "{document}"


def resolve_sub_config(value: dict | PreTrainedConfig | None, default_model_type: str) -> PreTrainedConfig:
    """A config object from a config, a `to_dict()` dict (its `model_type` picks the class) or None (defaults)."""
    if isinstance(value, PreTrainedConfig):
        return value
    value = dict(value or {})
    model_type = value.pop("model_type", default_model_type)
    config_class = PROJECT_CONFIGS.get(model_type) or CONFIG_MAPPING[model_type]
    return config_class(**value)


class RetrieverGeneratorConfig(PreTrainedConfig):
    r"""
    Configuration of [`RetrieverGeneratorForMultipleChoice`].

    Args:
        retriever (`MultimodalRetrieverConfig` or `dict`): the retriever.
        generator (`PreTrainedConfig` or `dict`): any image-text-to-text model (SigPhi by default; `mllama` for
            Llama-3.2-Vision).
        n_docs (`int`): how many retrieved documents the generator reads.
        document_template (`str`): how each document is shown to the generator; `{document}` is replaced by a
            text document's text, or by the image of an image document.
    """

    model_type = "retriever_generator"

    retriever: dict | PreTrainedConfig | None = None
    generator: dict | PreTrainedConfig | None = None
    n_docs: int = 1
    document_template: str = "Document: {document}\n"

    def __post_init__(self, **kwargs):
        self.retriever = resolve_sub_config(self.retriever, "multimodal_retriever")
        self.generator = resolve_sub_config(self.generator, "sigphi")
        if self.document_template.count(DOCUMENT_PLACEHOLDER) != 1:
            raise ValueError(f"document_template must contain {DOCUMENT_PLACEHOLDER} exactly once, "
                             f"got {self.document_template!r}")
        super().__post_init__(**kwargs)

    @classmethod
    def from_retriever_generator_configs(cls, retriever_config: PreTrainedConfig, generator_config: PreTrainedConfig,
                                         **kwargs) -> "RetrieverGeneratorConfig":
        return cls(retriever=retriever_config.to_dict(), generator=generator_config.to_dict(), **kwargs)


__all__ = ["RetrieverGeneratorConfig"]
