"""Models of this package; importing it registers every class with the transformers Auto classes."""

from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                          AutoProcessor)

from ._package_check import require_project_module

require_project_module("configuration", "SigPhiConfig")
require_project_module("processing", "SigPhiProcessor")

from configuration import SigPhiConfig, SigPhiVisionConfig
from processing import SigPhiProcessor

from .modeling_sigphi import SigPhiForConditionalGeneration, SigPhiModel, SigPhiPreTrainedModel

AutoConfig.register("sigphi_vision", SigPhiVisionConfig, exist_ok=True)
AutoConfig.register("sigphi", SigPhiConfig, exist_ok=True)
AutoModel.register(SigPhiConfig, SigPhiModel, exist_ok=True)
AutoModelForCausalLM.register(SigPhiConfig, SigPhiForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(SigPhiConfig, SigPhiForConditionalGeneration, exist_ok=True)
AutoProcessor.register(SigPhiConfig, SigPhiProcessor, exist_ok=True)

# Saved folders carry these classes' code, so they load with trust_remote_code where this package is absent.
SigPhiConfig.register_for_auto_class()
SigPhiModel.register_for_auto_class("AutoModel")
SigPhiForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
SigPhiProcessor.register_for_auto_class()

__all__ = ["SigPhiForConditionalGeneration", "SigPhiModel", "SigPhiPreTrainedModel"]

# Retriever-generator (multiple-choice VQA): a multimodal retriever and a generator (SigPhi by default).
from configuration import MultimodalRetrieverConfig, RetrieverGeneratorConfig
from processing import MultimodalRetrieverProcessor, RetrieverGeneratorProcessor

from .document_index import DocumentIndex
from .modeling_retriever import MultimodalRetrieverModel, MultimodalRetrieverPreTrainedModel
from .modeling_retriever_generator import RetrieverGeneratorForMultipleChoice, RetrieverGeneratorPreTrainedModel

AutoConfig.register("multimodal_retriever", MultimodalRetrieverConfig, exist_ok=True)
AutoConfig.register("retriever_generator", RetrieverGeneratorConfig, exist_ok=True)
AutoModel.register(MultimodalRetrieverConfig, MultimodalRetrieverModel, exist_ok=True)
AutoModel.register(RetrieverGeneratorConfig, RetrieverGeneratorForMultipleChoice, exist_ok=True)
AutoProcessor.register(MultimodalRetrieverConfig, MultimodalRetrieverProcessor, exist_ok=True)
AutoProcessor.register(RetrieverGeneratorConfig, RetrieverGeneratorProcessor, exist_ok=True)

MultimodalRetrieverConfig.register_for_auto_class()
RetrieverGeneratorConfig.register_for_auto_class()
MultimodalRetrieverModel.register_for_auto_class("AutoModel")
RetrieverGeneratorForMultipleChoice.register_for_auto_class("AutoModel")
MultimodalRetrieverProcessor.register_for_auto_class()

__all__ += ["DocumentIndex", "MultimodalRetrieverModel", "MultimodalRetrieverPreTrainedModel",
            "RetrieverGeneratorForMultipleChoice", "RetrieverGeneratorPreTrainedModel"]
