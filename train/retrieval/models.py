"""The retriever and generator a retriever-generator starts from: a tiny from-scratch retriever (the quickstart's),
one of pretrained SigLIP towers, and a pretrained image-text-to-text generator (4-bit for QLoRA if asked).

The tiny SigPhi generator is `train.sigphi.tiny.build_tiny_sigphi`.
"""

import torch
from transformers import (AutoProcessor, AutoTokenizer, BitsAndBytesConfig, PreTrainedConfig, PreTrainedModel,
                          ProcessorMixin, SiglipTextConfig)

from configuration import MultimodalRetrieverConfig
from modeling import MultimodalRetrieverModel
from modeling.modeling_retriever_generator import generator_class
from processing import MultimodalRetrieverProcessor
from train.common.tokenizer import build_byte_level_tokenizer
from train.retrieval.task import RetrievalTask

TINY_RETRIEVER_IMAGE_MODEL = "resnet18"
# GroupNorm with one group (a LayerNorm over channels and pixels): unlike BatchNorm it normalises each image by
# itself, so query and document images trained in one batch never share a statistic.
TINY_RETRIEVER_IMAGE_KWARGS = {"layers": [1, 1, 1, 1], "channels": [32, 64, 64, 128], "stem_width": 16,
                               "norm_layer": "groupnorm1"}
TINY_RETRIEVER_TEXT_KWARGS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "max_position_embeddings": 64}


def build_tiny_retriever(task: RetrievalTask, seed: int = 0, loss_type: str = "infonce"
                         ) -> tuple[MultimodalRetrieverModel, MultimodalRetrieverProcessor]:
    """A from-scratch retriever (≈0.5 M parameters) with a byte-level tokenizer trained on the task's texts."""
    texts = [example.question for example in task.examples] + [doc["text"] for doc in task.corpus if doc["text"]]
    tokenizer = build_byte_level_tokenizer(texts, image_token=None)
    torch.manual_seed(seed)
    config = MultimodalRetrieverConfig(
        text_config=SiglipTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                     bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                     **TINY_RETRIEVER_TEXT_KWARGS),
        image_model_name=TINY_RETRIEVER_IMAGE_MODEL, image_model_kwargs=TINY_RETRIEVER_IMAGE_KWARGS, image_size=16,
        projection_dim=64, text_pooling="mean", loss_type=loss_type)
    return MultimodalRetrieverModel(config), MultimodalRetrieverProcessor.from_retriever_config(tokenizer, config)


def build_siglip_retriever(image_model: str, text_model: str
                           ) -> tuple[MultimodalRetrieverModel, MultimodalRetrieverProcessor]:
    """A retriever of pretrained SigLIP towers and its processor (texts padded to SigLIP's 64 tokens)."""
    retriever = MultimodalRetrieverModel.from_pretrained_components(image_model, text_model)
    processor = MultimodalRetrieverProcessor.from_retriever_config(
        AutoTokenizer.from_pretrained(text_model), retriever.config,
        max_length=retriever.config.text_config.max_position_embeddings, pad_to_max_length=True)
    return retriever, processor


def load_generator(name_or_path: str, load_in_4bit: bool = False) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A pretrained generator in its saved dtype and its processor, 4-bit quantized for QLoRA if asked."""
    model_type = PreTrainedConfig.get_config_dict(name_or_path)[0]["model_type"]
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4") if load_in_4bit else None
    model = generator_class(model_type).from_pretrained(name_or_path, dtype="auto", quantization_config=quantization)
    return model, AutoProcessor.from_pretrained(name_or_path)
