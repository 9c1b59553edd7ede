"""Configurations of the SigPhi vision-language model and the retriever-generator pair."""

from .configuration_sigphi import SigPhiConfig, SigPhiVisionConfig, reduced_image_seq_length

__all__ = ["SigPhiConfig", "SigPhiVisionConfig", "reduced_image_seq_length"]
from .configuration_retriever import MultimodalRetrieverConfig
from .configuration_retriever_generator import RetrieverGeneratorConfig

__all__ += ["MultimodalRetrieverConfig", "RetrieverGeneratorConfig"]
