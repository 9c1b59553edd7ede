"""Configurations of the SigPhi vision-language model and the retriever-generator pair."""

from .configuration_sigphi import SigPhiConfig, SigPhiVisionConfig

__all__ = ["SigPhiConfig", "SigPhiVisionConfig"]
from .configuration_retriever import MultimodalRetrieverConfig
from .configuration_retriever_generator import RetrieverGeneratorConfig

__all__ += ["MultimodalRetrieverConfig", "RetrieverGeneratorConfig"]
