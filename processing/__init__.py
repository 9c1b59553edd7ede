"""Processors: turn images and chat messages into model inputs."""

from .processing_sigphi import CHAT_TEMPLATE, IMAGE_TOKEN, SigPhiProcessor

__all__ = ["CHAT_TEMPLATE", "IMAGE_TOKEN", "SigPhiProcessor"]
from .processing_retriever_generator import MultimodalRetrieverProcessor, RetrieverGeneratorProcessor

__all__ += ["MultimodalRetrieverProcessor", "RetrieverGeneratorProcessor"]
