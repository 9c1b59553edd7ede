"""The retriever and generator a run starts from: the tiny preset's from-scratch parts, or pretrained ones (a saved
retriever, a published dual encoder such as SigLIP or CLIP, an image-text-to-text generator, 4-bit for QLoRA if asked).

The tiny SigPhi generator is `train.sigphi.tiny.build_tiny_sigphi`; what makes the tiny parts stand in for pretrained
ones is `train.retrieval.standins`.
"""

import torch
from transformers import (AutoConfig, AutoProcessor, BitsAndBytesConfig, PreTrainedConfig, PreTrainedModel,
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
    processor = MultimodalRetrieverProcessor.from_retriever_config(
        tokenizer, config, max_length=TINY_RETRIEVER_TEXT_KWARGS["max_position_embeddings"])
    return MultimodalRetrieverModel(config), processor


def load_retriever(name_or_path: str) -> tuple[MultimodalRetrieverModel, MultimodalRetrieverProcessor]:
    """A saved `MultimodalRetrieverModel` (with its processor), or a retriever made of a published dual encoder as it
    is (`SiglipModel`, `Siglip2Model`, `CLIPModel`: anything with `get_text_features` and `get_image_features`)."""
    if AutoConfig.from_pretrained(name_or_path).model_type == MultimodalRetrieverConfig.model_type:
        return MultimodalRetrieverModel.from_pretrained(name_or_path), AutoProcessor.from_pretrained(name_or_path)
    return (MultimodalRetrieverModel.from_dual_encoder(name_or_path),
            MultimodalRetrieverProcessor.from_dual_encoder(name_or_path))


def load_generator(name_or_path: str, load_in_4bit: bool = False) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A pretrained generator in its saved dtype and its processor, 4-bit quantized for QLoRA if asked."""
    model_type = PreTrainedConfig.get_config_dict(name_or_path)[0]["model_type"]
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4") if load_in_4bit else None
    model = generator_class(model_type).from_pretrained(name_or_path, dtype="auto", quantization_config=quantization)
    return model, AutoProcessor.from_pretrained(name_or_path)
