"""A multimodal dual-encoder retriever: queries are an image plus a question, documents are texts or images.

One text tower (a transformers encoder) embeds both questions and text documents, one image tower (timm) embeds
both query images and image documents, and linear projections put both in one L2-normalised space, as SigLIP
does. A query's text and image embeddings are fused by `QueryFusion` (their normalised sum plus a learned, gated
correction), because a question like "in the Kalomi catalogue, what colour is this digit?" is answered by a
document that names both the catalogue (text) and the digit (image).

Training ranks each query's gold documents above the other candidates of the batch (in-batch negatives plus
hard negatives the caller mined from the corpus): InfoNCE by default, SigLIP's sigmoid loss as an option.
The trained model carries a `DocumentIndex` (FAISS) of its corpus, saved beside the weights.
"""

import functools
from dataclasses import dataclass

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel, SiglipTextModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from configuration.configuration_retriever import MultimodalRetrieverConfig

from .document_index import DocumentIndex
from .self_contained_saving import SelfContainedSaveMixin

HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision")
# Text towers that `AutoModel` does not build from their config alone (it maps SigLIP's text config to nothing).
TEXT_TOWERS = {"siglip_text_model": SiglipTextModel}


def build_text_tower(text_config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised text encoder for `text_config` (SigLIP's text model or anything `AutoModel` builds)."""
    if text_config.model_type in TEXT_TOWERS:
        return TEXT_TOWERS[text_config.model_type](text_config)
    return AutoModel.from_config(text_config)


@dataclass
class MultimodalRetrieverOutput(ModelOutput):
    """Embeddings (L2-normalised, `projection_dim` wide), query-document logits and the ranking loss."""

    loss: torch.Tensor | None = None
    logits_per_query: torch.Tensor | None = None  # (n_queries, n_documents)
    query_embeds: torch.Tensor | None = None  # (n_queries, projection_dim)
    document_embeds: torch.Tensor | None = None  # (n_documents, projection_dim)


class QueryFusion(nn.Module):
    """Fuses a query's text and image embeddings: normalise(text + image + gate * MLP([text; image])).

    The gate starts at zero, so training starts from the normalised sum (which already retrieves documents that
    mention both what the text and what the image says) and learns interactions on top of it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
        """(n, dim) text and image embeddings, (n,) bool: queries without an image use their text alone."""
        has_image = has_image.to(text_embeds.dtype)[:, None]
        image_embeds = image_embeds * has_image
        interaction = self.mlp(torch.cat([text_embeds, image_embeds], dim=-1)) * has_image
        return F.normalize(text_embeds + image_embeds + self.gate * interaction, dim=-1)


def ranking_loss(logits: torch.Tensor, labels: torch.Tensor, loss_type: str = "infonce") -> torch.Tensor:
    """Loss of (n_queries, n_documents) `logits` given `labels`, True where a document is relevant to a query.

    `infonce`: -log of the softmax mass on the relevant documents (several positives allowed).
    `sigmoid`: SigLIP's binary loss on every query-document pair, summed over documents.
    """
    labels = labels.bool()
    if loss_type == "sigmoid":
        return -F.logsigmoid((labels.to(logits.dtype) * 2 - 1) * logits).sum(-1).mean()
    positives = logits.masked_fill(~labels, float("-inf"))
    return (torch.logsumexp(logits, dim=-1) - torch.logsumexp(positives, dim=-1)).mean()


class MultimodalRetrieverPreTrainedModel(SelfContainedSaveMixin, PreTrainedModel):
    config_class = MultimodalRetrieverConfig
    config: MultimodalRetrieverConfig
    base_model_prefix = "retriever"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    extra_auto_classes = {"AutoModel": "MultimodalRetrieverModel"}

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise this file's parameters only: the timm tower keeps timm's initialisation, the text tower its own,
        the fusion MLP PyTorch's."""
        if isinstance(module, MultimodalRetrieverModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init)
            init.constant_(module.logit_bias, self.config.logit_bias_init)
        elif isinstance(module, QueryFusion):
            init.zeros_(module.gate)
        elif isinstance(module, nn.Linear) and module in (self.text_projection, self.image_projection):
            init.normal_(module.weight, std=module.in_features ** -0.5)
            init.zeros_(module.bias)


class MultimodalRetrieverModel(MultimodalRetrieverPreTrainedModel):
    """Embeds queries (question + optional image) and documents (text or image) in one space and ranks them."""

    def __init__(self, config: MultimodalRetrieverConfig):
        super().__init__(config)
        self.text_model = build_text_tower(config.text_config)
        self.image_model = timm.create_model(config.image_model_name, pretrained=False, **config.image_model_kwargs)
        text_width = (config.text_config.hidden_size if config.text_pooling == "mean"
                      else getattr(config.text_config, "projection_size", config.text_config.hidden_size))
        self.text_projection = nn.Linear(text_width, config.projection_dim)
        self.image_projection = nn.Linear(self.image_model.num_features, config.projection_dim)
        self.query_fusion = QueryFusion(config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        self.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init))
        self._document_index: DocumentIndex | None = None
        self._document_index_loader = None
        self.post_init()

    @classmethod
    def from_pretrained_components(cls, image_model: str = "vit_so400m_patch14_siglip_384.webli",
                                   text_model: str = "google/siglip-so400m-patch14-384",
                                   image_model_kwargs: dict | None = None) -> "MultimodalRetrieverModel":
        """A retriever made of pretrained SigLIP towers (build its processor with
        `MultimodalRetrieverProcessor.from_retriever_config(tokenizer, model.config, pad_to_max_length=True)`).

        The image tower is timm's (its attention-pooled output), the text tower that of a transformers SigLIP
        checkpoint (its pooled output). SigLIP trained both into one space, so the projections start as the
        identity and the logit scale comes from the checkpoint: the retriever ranks before any fine-tuning.
        The skeleton is built on the `meta` device, so memory holds each pretrained weight once.

        Args:
            image_model: timm name with pretrained weights.
            text_model: Hub id or folder of a SigLIP checkpoint (`SiglipModel`) or of its text model.
            image_model_kwargs: extra `timm.create_model` arguments (`pretrained_cfg_overlay=dict(file=...)` loads
                the weights from a local file).
        """
        image_model_kwargs = dict(image_model_kwargs or {})
        image_tower = timm.create_model(image_model, pretrained=True, num_classes=0, **image_model_kwargs)
        siglip = AutoModel.from_pretrained(text_model)
        text_tower = getattr(siglip, "text_model", siglip)
        width = text_tower.config.projection_size
        if image_tower.num_features != width:
            raise ValueError(f"{image_model} embeds images in {image_tower.num_features} dimensions but {text_model} "
                             f"embeds texts in {width}: they are not one SigLIP space.")
        data_config = timm.data.resolve_model_data_config(image_tower)
        config = MultimodalRetrieverConfig(
            text_config=text_tower.config, image_model_name=image_model,
            image_model_kwargs={k: v for k, v in image_model_kwargs.items() if k != "pretrained_cfg_overlay"},
            image_size=image_model_kwargs.get("img_size", data_config["input_size"][-1]),
            image_mean=data_config["mean"], image_std=data_config["std"], projection_dim=width, text_pooling="pooler",
            logit_scale_init=float(getattr(siglip, "logit_scale", torch.tensor(2.6592))))
        with torch.device("meta"):
            model = cls(config)
        model.text_model, model.image_model = text_tower, image_tower
        model.text_projection, model.image_projection = nn.Linear(width, width), nn.Linear(width, width)
        for projection in (model.text_projection, model.image_projection):
            nn.init.eye_(projection.weight)
            nn.init.zeros_(projection.bias)
        model.query_fusion = QueryFusion(width)
        model.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        model.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init))
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def encode_text(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, seq) token ids -> (n, projection_dim) normalised embeddings."""
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.text_pooling == "mean":
            mask = attention_mask[..., None].to(outputs.last_hidden_state.dtype)
            features = (outputs.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            features = outputs.pooler_output
        return F.normalize(self.text_projection(features), dim=-1)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, projection_dim) normalised embeddings."""
        features = self.image_model(pixel_values.to(self.image_projection.weight.dtype))
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_queries(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor,
                       pixel_values: torch.Tensor | None = None,
                       query_image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Questions (n, seq) with one image each (n, 3, H, W) -> (n, projection_dim).

        `query_image_mask` (n,) is False for queries whose image slot is a blank filler (no image given).
        """
        image_embeds = self.encode_images(pixel_values) if pixel_values is not None else None
        return self._fuse_queries(self.encode_text(input_ids, attention_mask), image_embeds, query_image_mask)

    def encode_documents(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                         pixel_values: torch.Tensor | None = None,
                         document_is_image: torch.Tensor | None = None) -> torch.Tensor:
        """Text documents (n_text, seq) and image documents (n_image, 3, H, W) -> (n_docs, projection_dim).

        `document_is_image` (n_docs,) bool gives the order: text rows fill its False places in order, images
        its True places. Without it, the documents are all of the one kind given.
        """
        text_embeds = self.encode_text(input_ids, attention_mask) if input_ids is not None else None
        image_embeds = self.encode_images(pixel_values) if pixel_values is not None else None
        return self._place_documents(text_embeds, image_embeds, document_is_image)

    def _fuse_queries(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor | None,
                      query_image_mask: torch.Tensor | None) -> torch.Tensor:
        if image_embeds is None:
            return text_embeds
        if query_image_mask is None:
            query_image_mask = torch.ones(len(text_embeds), dtype=torch.bool, device=text_embeds.device)
        return self.query_fusion(text_embeds, image_embeds, query_image_mask.to(text_embeds.device))

    def _place_documents(self, text_embeds: torch.Tensor | None, image_embeds: torch.Tensor | None,
                         document_is_image: torch.Tensor | None) -> torch.Tensor:
        if document_is_image is None:  # documents of one kind
            only_kind = text_embeds if text_embeds is not None else image_embeds
            document_is_image = torch.full((len(only_kind),), text_embeds is None, dtype=torch.bool)
        document_is_image = document_is_image.to(self.logit_scale.device)
        embeds = self.logit_scale.new_zeros(len(document_is_image), self.config.projection_dim)
        if text_embeds is not None:
            embeds[~document_is_image] = text_embeds
        if image_embeds is not None:
            embeds[document_is_image] = image_embeds
        return embeds

    def score(self, query_embeds: torch.Tensor, document_embeds: torch.Tensor) -> torch.Tensor:
        """(n_queries, dim) x (n_docs, dim) -> (n_queries, n_docs) logits: scaled cosine (+ bias for sigmoid)."""
        logits = query_embeds @ document_embeds.T * self.logit_scale.exp()
        return logits + self.logit_bias if self.config.loss_type == "sigmoid" else logits

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        query_image_mask: torch.Tensor | None = None,
        document_input_ids: torch.LongTensor | None = None,
        document_attention_mask: torch.Tensor | None = None,
        document_pixel_values: torch.Tensor | None = None,
        document_is_image: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MultimodalRetrieverOutput:
        r"""
        Query inputs as `encode_queries` takes them, document inputs (prefixed `document_`) as `encode_documents`
        takes them. Query and document images go through the image tower in one batch; use a tower whose
        normalisation works per image (ViT LayerNorm, GroupNorm: the tiny preset's ResNet uses `groupnorm1`), since
        BatchNorm in training mode would mix the statistics of the queries and the documents they are compared with.

        labels (`torch.BoolTensor` of shape `(n_queries, n_documents)`, *optional*):
            True where a document is relevant to a query; every other document of the batch is a negative.
        """
        images = [p for p in (pixel_values, document_pixel_values) if p is not None]
        image_embeds = self.encode_images(torch.cat(images)) if images else None
        n_query_images = len(pixel_values) if pixel_values is not None else 0
        query_embeds = self._fuse_queries(self.encode_text(input_ids, attention_mask),
                                          image_embeds[:n_query_images] if pixel_values is not None else None,
                                          query_image_mask)
        document_embeds = logits = loss = None
        if document_input_ids is not None or document_pixel_values is not None:
            text_embeds = (self.encode_text(document_input_ids, document_attention_mask)
                           if document_input_ids is not None else None)
            document_image_embeds = image_embeds[n_query_images:] if document_pixel_values is not None else None
            document_embeds = self._place_documents(text_embeds, document_image_embeds, document_is_image)
            logits = self.score(query_embeds, document_embeds)
            if labels is not None:
                loss = ranking_loss(logits, labels, self.config.loss_type)
        return MultimodalRetrieverOutput(loss=loss, logits_per_query=logits, query_embeds=query_embeds,
                                         document_embeds=document_embeds)

    # The document index ------------------------------------------------------------------------------------

    @torch.no_grad()
    def embed_queries(self, questions: list[str], images: list | None, processor, batch_size: int = 256) -> np.ndarray:
        """(n_queries, projection_dim) float32 embeddings of questions and their images (None: no image), made
        with a `MultimodalRetrieverProcessor`, in batches."""
        images = images if images is not None else [None] * len(questions)
        chunks = []
        for start in range(0, len(questions), batch_size):
            inputs = processor.process_queries(questions[start:start + batch_size], images[start:start + batch_size])
            chunks.append(self.encode_queries(**inputs.to(self.device)))
        return torch.cat(chunks).float().cpu().numpy()

    @torch.no_grad()
    def embed_documents(self, documents: list[dict], processor, batch_size: int = 256) -> np.ndarray:
        """(n_docs, projection_dim) float32 embeddings of `{"text", "image"}` documents, made with a
        `MultimodalRetrieverProcessor`, in batches."""
        chunks = []
        for start in range(0, len(documents), batch_size):
            inputs = processor.process_documents(documents[start:start + batch_size])
            chunks.append(self.encode_documents(**inputs.to(self.device)))
        return torch.cat(chunks).float().cpu().numpy()

    def build_document_index(self, documents: list[dict], processor, factory: str = "Flat",
                             search_parameters: str | None = None, batch_size: int = 256) -> DocumentIndex:
        """Embed `documents` with the current weights and make them the corpus `retrieve` searches.

        Call it again with another corpus to retrieve from that one: nothing is retrained. `factory` and
        `search_parameters` choose the FAISS index (see `DocumentIndex`).
        """
        index = DocumentIndex.build(documents, self.embed_documents(documents, processor, batch_size), factory,
                                    search_parameters)
        self.set_document_index(index)
        return index

    def set_document_index(self, index: DocumentIndex | None) -> None:
        self._document_index, self._document_index_loader = index, None

    @property
    def document_index(self) -> DocumentIndex | None:
        """The corpus `retrieve` searches; one saved with the model is read (faiss, datasets) on first use."""
        if self._document_index is None and self._document_index_loader is not None:
            self.set_document_index(self._document_index_loader())
        return self._document_index

    def retrieve(self, query_embeds: np.ndarray, k: int) -> tuple[torch.Tensor, torch.LongTensor]:
        """(scores, document ids), each (n_queries, k), best first, of the indexed documents nearest each query
        (`query_embeds` as `embed_queries` returns them)."""
        if self.document_index is None:
            raise ValueError("This retriever has no document index: call build_document_index(documents, processor).")
        scores, ids = self.document_index.search(query_embeds, k)
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the weights and, when there is one, the document index (written first, so that `push_to_hub`
        uploads it too)."""
        if self.document_index is not None:
            self.document_index.save(save_directory)
        super().save_pretrained(save_directory, *args, **kwargs)

    def locate_document_index(self, pretrained_model_name_or_path, subfolder: str = "", **hub_kwargs) -> None:
        """Read the document index saved at this location (a folder or Hub repo) when it is first needed."""
        self._document_index = None
        self._document_index_loader = functools.partial(
            DocumentIndex.from_pretrained, pretrained_model_name_or_path, subfolder=subfolder,
            **{key: value for key, value in hub_kwargs.items() if key in HUB_KWARGS})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> "MultimodalRetrieverModel":
        """The saved model, with the document index saved beside it (read when first used)."""
        model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model.locate_document_index(pretrained_model_name_or_path, **kwargs)
        return model


__all__ = ["MultimodalRetrieverModel", "MultimodalRetrieverPreTrainedModel", "QueryFusion", "ranking_loss"]
