"""Configurations of the SigPhi vision-language model and the retriever-generator pair."""

from .configuration_sigphi import SigPhiConfig, SigPhiVisionConfig

__all__ = ["SigPhiConfig", "SigPhiVisionConfig"]
