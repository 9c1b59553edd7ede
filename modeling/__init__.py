"""Models of this package; importing it registers every class with the transformers Auto classes."""

from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                          AutoProcessor)

from ._package_check import require_project_module

require_project_module("configuration", "SigPhiConfig")
require_project_module("processing", "SigPhiProcessor")

from configuration import (MultimodalRetrieverConfig, RetrieverGeneratorConfig, SigPhiConfig,  # noqa: E402
                           SigPhiVisionConfig)
from processing import MultimodalRetrieverProcessor, RetrieverGeneratorProcessor, SigPhiProcessor  # noqa: E402

from .document_index import DocumentIndex  # noqa: E402
from .modeling_retriever import MultimodalRetrieverModel, MultimodalRetrieverPreTrainedModel  # noqa: E402
from .modeling_retriever_generator import (RetrieverGeneratorForMultipleChoice,  # noqa: E402
                                           RetrieverGeneratorPreTrainedModel)
from .modeling_sigphi import SigPhiForConditionalGeneration, SigPhiModel, SigPhiPreTrainedModel  # noqa: E402

# model type -> config class, and (Auto class, config class, model or processor class) to register
CONFIGS = {"sigphi_vision": SigPhiVisionConfig, "sigphi": SigPhiConfig,
           "multimodal_retriever": MultimodalRetrieverConfig, "retriever_generator": RetrieverGeneratorConfig}
AUTO_CLASSES = [
    (AutoModel, SigPhiConfig, SigPhiModel),
    (AutoModelForCausalLM, SigPhiConfig, SigPhiForConditionalGeneration),
    (AutoModelForImageTextToText, SigPhiConfig, SigPhiForConditionalGeneration),
    (AutoProcessor, SigPhiConfig, SigPhiProcessor),
    (AutoModel, MultimodalRetrieverConfig, MultimodalRetrieverModel),
    (AutoModel, RetrieverGeneratorConfig, RetrieverGeneratorForMultipleChoice),
    (AutoProcessor, MultimodalRetrieverConfig, MultimodalRetrieverProcessor),
    (AutoProcessor, RetrieverGeneratorConfig, RetrieverGeneratorProcessor),
]
for model_type, config_class in CONFIGS.items():
    AutoConfig.register(model_type, config_class, exist_ok=True)
for auto_class, config_class, registered_class in AUTO_CLASSES:
    auto_class.register(config_class, registered_class, exist_ok=True)

# Saved folders carry these classes' code, so they load with trust_remote_code where this package is absent.
for config_class in (SigPhiConfig, MultimodalRetrieverConfig, RetrieverGeneratorConfig):
    config_class.register_for_auto_class()
SigPhiModel.register_for_auto_class("AutoModel")
SigPhiForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
MultimodalRetrieverModel.register_for_auto_class("AutoModel")
RetrieverGeneratorForMultipleChoice.register_for_auto_class("AutoModel")
SigPhiProcessor.register_for_auto_class()
MultimodalRetrieverProcessor.register_for_auto_class()

__all__ = ["DocumentIndex", "MultimodalRetrieverModel", "MultimodalRetrieverPreTrainedModel",
           "RetrieverGeneratorForMultipleChoice", "RetrieverGeneratorPreTrainedModel", "SigPhiForConditionalGeneration",
           "SigPhiModel", "SigPhiPreTrainedModel"]
