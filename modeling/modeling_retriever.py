"""A multimodal dual-encoder retriever: queries are an image plus a question, documents are texts, images, or images
with their text (a picture and its article), all in one L2-normalised space, as SigLIP and CLIP put them.

The towers are a published dual encoder as it is (`SiglipModel`, `Siglip2Model`, `CLIPModel`: its own towers and
projections, `from_dual_encoder`), or a transformers text encoder beside a timm image tower with a linear projection
each (the tiny preset's from-scratch towers). A query's text and image embeddings are fused by `ModalityFusion`
(their normalised sum plus a learned, gated correction), because a question like "in the Kalomi catalogue, what
colour is this digit?" is answered by a document that names both the catalogue (text) and the digit (image); a
document's picture and text are fused the same way by a second one.

A passage longer than the text tower's context is embedded as several chunks (`MultimodalRetrieverProcessor` cuts
them); a document scores as its best chunk (`max_per_document`), so retrieval, training and recall count documents.
Training ranks each query's gold documents above the other candidates of the batch (in-batch negatives plus hard
negatives the caller mined from the corpus): InfoNCE by default, SigLIP's sigmoid loss as an option.
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
from transformers.utils.logging import tqdm

from configuration.configuration_retriever import MultimodalRetrieverConfig

from .document_index import DocumentIndex
from .large_index import DEFAULT_CHUNK_SIZE, EmbeddingWriter
from .self_contained_saving import SelfContainedSaveMixin
from .transformers_compat import pooled_features

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
    logits_per_query: torch.Tensor | None = None  # (n_queries, n_documents): each document's best chunk
    query_embeds: torch.Tensor | None = None  # (n_queries, projection_dim)
    document_embeds: torch.Tensor | None = None  # (n_chunks, projection_dim)


class ModalityFusion(nn.Module):
    """Fuses a text and an image embedding of one thing: normalise(text + image + gate * MLP([text; image])), with
    the missing modality left out.

    The gate starts at zero, so training starts from the normalised sum (which already retrieves documents that
    mention both what the text and what the image says) and learns interactions on top of it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor, has_text: torch.Tensor,
                has_image: torch.Tensor) -> torch.Tensor:
        """(n, dim) text and image embeddings (zeros where missing), (n,) bool masks -> (n, dim)."""
        has_text, has_image = has_text.to(text_embeds.dtype)[:, None], has_image.to(text_embeds.dtype)[:, None]
        text_embeds, image_embeds = text_embeds * has_text, image_embeds * has_image
        interaction = self.mlp(torch.cat([text_embeds, image_embeds], dim=-1)) * has_text * has_image
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


def max_per_document(chunk_logits: torch.Tensor, chunk_document_ids: torch.LongTensor,
                     n_documents: int | None = None) -> torch.Tensor:
    """(n_queries, n_chunks) scores and (n_chunks,) each chunk's document -> (n_queries, n_documents): a document
    scores as its best chunk (MaxP), so a long passage is found by the part that answers."""
    chunk_document_ids = chunk_document_ids.to(chunk_logits.device)
    n_documents = int(chunk_document_ids.max()) + 1 if n_documents is None else n_documents
    scores = chunk_logits.new_full((chunk_logits.shape[0], n_documents), float("-inf"))
    return scores.scatter_reduce(1, chunk_document_ids.expand_as(chunk_logits), chunk_logits, "amax")


class MultimodalRetrieverPreTrainedModel(SelfContainedSaveMixin, PreTrainedModel):
    config_class = MultimodalRetrieverConfig
    config: MultimodalRetrieverConfig
    base_model_prefix = "retriever"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    extra_auto_classes = {"AutoModel": "MultimodalRetrieverModel"}
    # The ranking loss is a mean over the batch's queries: `Trainer` must not pass token counts into `forward`, whose
    # extra keywords are image inputs.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise this file's parameters only: the towers keep their own initialisation, the fusion MLPs
        PyTorch's."""
        if isinstance(module, MultimodalRetrieverModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init)
            init.constant_(module.logit_bias, self.config.logit_bias_init)
        elif isinstance(module, ModalityFusion):
            init.zeros_(module.gate)
        elif isinstance(module, nn.Linear) and module in (getattr(self, "text_projection", None),
                                                          getattr(self, "image_projection", None)):
            init.normal_(module.weight, std=module.in_features ** -0.5)
            init.zeros_(module.bias)


class MultimodalRetrieverModel(MultimodalRetrieverPreTrainedModel):
    """Embeds queries (question + optional image) and documents (text, image or both) in one space and ranks them."""

    def __init__(self, config: MultimodalRetrieverConfig):
        super().__init__(config)
        if config.dual_encoder_config is not None:
            self.dual_encoder = AutoModel.from_config(config.dual_encoder_config)
        else:
            self.text_model = build_text_tower(config.text_config)
            self.image_model = timm.create_model(config.image_model_name, pretrained=False,
                                                 **config.image_model_kwargs)
            text_width = (config.text_config.hidden_size if config.text_pooling == "mean"
                          else getattr(config.text_config, "projection_size", config.text_config.hidden_size))
            self.text_projection = nn.Linear(text_width, config.projection_dim)
            self.image_projection = nn.Linear(self.image_model.num_features, config.projection_dim)
        self.query_fusion = ModalityFusion(config.projection_dim)
        self.document_fusion = ModalityFusion(config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        self.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init))
        self._document_index: DocumentIndex | None = None
        self._document_index_loader = None
        self.post_init()

    @classmethod
    def from_dual_encoder(cls, pretrained_model_name_or_path: str, **kwargs) -> "MultimodalRetrieverModel":
        """A retriever made of a published dual encoder as it is (`SiglipModel`, `Siglip2Model`, `CLIPModel`: a Hub id
        or a folder), whose texts and images already share one space, so it ranks before any fine-tuning. Its
        processor: `MultimodalRetrieverProcessor.from_dual_encoder(same path)`.

        The skeleton is built on the `meta` device, so memory holds each pretrained weight once; the learned logit
        scale (and SigLIP's bias) start from the checkpoint's. `kwargs` go to `AutoModel.from_pretrained`.
        """
        dual_encoder = AutoModel.from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not (hasattr(dual_encoder, "get_text_features") and hasattr(dual_encoder, "get_image_features")):
            raise ValueError(f"{pretrained_model_name_or_path} ({type(dual_encoder).__name__}) is not a dual encoder: "
                             "it has no get_text_features and get_image_features.")
        scale, bias = (getattr(dual_encoder, name, None) for name in ("logit_scale", "logit_bias"))
        config = MultimodalRetrieverConfig(
            dual_encoder_config=dual_encoder.config,
            logit_scale_init=scale.item() if scale is not None else MultimodalRetrieverConfig.logit_scale_init,
            logit_bias_init=bias.item() if bias is not None else MultimodalRetrieverConfig.logit_bias_init)
        with torch.device("meta"):
            model = cls(config)
        model.dual_encoder = dual_encoder
        width = config.projection_dim
        model.query_fusion, model.document_fusion = ModalityFusion(width), ModalityFusion(width)
        model.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        model.logit_bias = nn.Parameter(torch.tensor(config.logit_bias_init))
        return model

    def get_input_embeddings(self) -> nn.Module:
        return (self.dual_encoder if self.config.dual_encoder_config is not None
                else self.text_model).get_input_embeddings()

    def encode_text(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, seq) token ids -> (n, projection_dim) normalised embeddings."""
        if self.config.dual_encoder_config is not None:
            features = pooled_features(self.dual_encoder.get_text_features(input_ids=input_ids,
                                                                           attention_mask=attention_mask))
            return F.normalize(features, dim=-1)
        outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.text_pooling == "mean":
            mask = attention_mask[..., None].to(outputs.last_hidden_state.dtype)
            features = (outputs.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            features = outputs.pooler_output
        return F.normalize(self.text_projection(features), dim=-1)

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs) -> torch.Tensor:
        """(n, 3, H, W) (and whatever else the image processor gave, e.g. SigLIP 2's `pixel_attention_mask`,
        `spatial_shapes`) -> (n, projection_dim) normalised embeddings."""
        if self.config.dual_encoder_config is not None:
            pixel_values = pixel_values.to(self.dual_encoder.dtype)
            return F.normalize(pooled_features(self.dual_encoder.get_image_features(pixel_values=pixel_values,
                                                                                    **image_kwargs)), dim=-1)
        features = self.image_model(pixel_values.to(self.image_projection.weight.dtype))
        return F.normalize(self.image_projection(features), dim=-1)

    def encode_queries(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor,
                       pixel_values: torch.Tensor | None = None, query_image_mask: torch.Tensor | None = None,
                       **image_kwargs) -> torch.Tensor:
        """Questions (n, seq) with one image each (n, 3, H, W) -> (n, projection_dim).

        `query_image_mask` (n,) is False for queries whose image slot is a blank filler (no image given).
        """
        text_embeds = self.encode_text(input_ids, attention_mask)
        if pixel_values is None:
            return text_embeds
        if query_image_mask is None:
            query_image_mask = torch.ones(len(text_embeds), dtype=torch.bool)
        has_text = torch.ones(len(text_embeds), dtype=torch.bool, device=text_embeds.device)
        return self.query_fusion(text_embeds, self.encode_images(pixel_values, **image_kwargs), has_text,
                                 query_image_mask.to(text_embeds.device))

    def encode_documents(self, chunk_text_ids: torch.LongTensor, chunk_image_ids: torch.LongTensor,
                         input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                         pixel_values: torch.Tensor | None = None, chunk_document_ids: torch.LongTensor | None = None,
                         **image_kwargs) -> torch.Tensor:
        """Document chunks, as `MultimodalRetrieverProcessor.process_documents` lays them out, -> (n_chunks,
        projection_dim): chunk `c` is text row `chunk_text_ids[c]` and/or image `chunk_image_ids[c]` (-1: none),
        fused when it has both (a picture with a chunk of its article)."""
        device = self.logit_scale.device
        chunk_text_ids, chunk_image_ids = chunk_text_ids.to(device), chunk_image_ids.to(device)
        text_embeds = image_embeds = self.logit_scale.new_zeros(len(chunk_text_ids), self.config.projection_dim)
        if input_ids is not None:
            text_embeds = self.encode_text(input_ids, attention_mask)[chunk_text_ids.clamp(min=0)]
        if pixel_values is not None:
            image_embeds = self.encode_images(pixel_values, **image_kwargs)[chunk_image_ids.clamp(min=0)]
        has_text, has_image = chunk_text_ids >= 0, chunk_image_ids >= 0
        both = has_text & has_image
        embeds = torch.where(has_text[:, None], text_embeds, image_embeds)
        if both.any():
            embeds = torch.where(both[:, None], self.document_fusion(text_embeds, image_embeds, has_text, has_image),
                                 embeds)
        return embeds

    def score(self, query_embeds: torch.Tensor, document_embeds: torch.Tensor) -> torch.Tensor:
        """(n_queries, dim) x (n_chunks, dim) -> (n_queries, n_chunks) logits: scaled cosine (+ bias for sigmoid)."""
        logits = query_embeds @ document_embeds.T * self.logit_scale.exp()
        return logits + self.logit_bias if self.config.loss_type == "sigmoid" else logits

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        query_image_mask: torch.Tensor | None = None,
        documents: dict | None = None,
        labels: torch.Tensor | None = None,
        **image_kwargs,
    ) -> MultimodalRetrieverOutput:
        r"""
        Query inputs as `encode_queries` takes them; `documents` as `MultimodalRetrieverProcessor.process_documents`
        returns them (a mapping: chunks, their documents, tokens and pixels).

        labels (`torch.BoolTensor` of shape `(n_queries, n_documents)`, *optional*):
            True where a document is relevant to a query; every other document of the batch is a negative. A
            document's logit is its best chunk's.
        """
        query_embeds = self.encode_queries(input_ids, attention_mask, pixel_values, query_image_mask, **image_kwargs)
        document_embeds = logits = loss = None
        if documents is not None:
            document_embeds = self.encode_documents(**documents)
            logits = max_per_document(self.score(query_embeds, document_embeds), documents["chunk_document_ids"])
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
    def _embedded_batches(self, documents, processor, batch_size: int, progress: bool | None):
        """(chunk embeddings, their document ids) per batch of `documents`: a list of `{"text", "image"}` dicts or
        a `datasets.Dataset` with those columns (whose slices are columns, turned into rows here)."""
        starts = range(0, len(documents), batch_size)
        for start in tqdm(starts, desc="embedding documents", unit="batch",
                          disable=len(starts) < 4 if progress is None else not progress):
            batch = documents[start:start + batch_size]
            if isinstance(batch, dict):
                batch = [dict(zip(batch, values)) for values in zip(*batch.values())]
            inputs = processor.process_documents(batch)
            yield (self.encode_documents(**inputs.to(self.device)).float().cpu().numpy(),
                   inputs["chunk_document_ids"].numpy() + start)

    def embed_documents(self, documents: list[dict], processor, batch_size: int = 256,
                        progress: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of `{"text", "image"}` documents, made with a `MultimodalRetrieverProcessor` in batches:
        ((n_chunks, projection_dim) float32 chunk embeddings, (n_chunks,) each chunk's document id)."""
        batches = list(self._embedded_batches(documents, processor, batch_size, progress))
        if not batches:
            return np.zeros((0, self.config.projection_dim), np.float32), np.zeros(0, np.int64)
        return np.concatenate([e for e, _ in batches]), np.concatenate([ids for _, ids in batches])

    def embed_documents_to_disk(self, documents, processor, path, batch_size: int = 256,
                                progress: bool | None = None) -> tuple[np.memmap, np.ndarray]:
        """`embed_documents` for a corpus whose embeddings do not fit in memory: each batch is appended to the
        `.npy` file `path` as it is made, and the file comes back memory-mapped (read-only), with each chunk's
        document id (int64, 8 bytes a chunk, in memory)."""
        writer = EmbeddingWriter(path, self.config.projection_dim)
        document_ids = [np.zeros(0, np.int64)]
        for embeddings, ids in self._embedded_batches(documents, processor, batch_size, progress):
            writer.write(embeddings)
            document_ids.append(ids)
        return writer.close(), np.concatenate(document_ids)

    def build_document_index(self, documents, processor, factory: str = "Flat",
                             search_parameters: str | None = None, batch_size: int = 256,
                             name: str = "corpus", embeddings_path=None, index_train_size: int | None = None,
                             on_disk=None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> DocumentIndex:
        """Embed `documents` with the current weights and make them the corpus `retrieve` searches, under `name`
        (what predictions say they searched).

        Call it again with another corpus to retrieve from that one: nothing is retrained. `factory` and
        `search_parameters` choose the FAISS index (see `DocumentIndex`). For a corpus bigger than memory
        (`documents` a `datasets.Dataset`): `embeddings_path` streams the embeddings to that `.npy` file instead
        of memory, `index_train_size` is how many chunks train the index (default 256 per IVF list), and
        `on_disk` (a file path, IVF factories) keeps the inverted lists in that file; `save_pretrained` copies it
        beside the index as `documents.ivfdata`.
        """
        embed = (functools.partial(self.embed_documents_to_disk, path=embeddings_path) if embeddings_path
                 else self.embed_documents)
        index = DocumentIndex.build(documents, *embed(documents, processor, batch_size=batch_size), factory,
                                    search_parameters, name=name, train_size=index_train_size, on_disk=on_disk,
                                    chunk_size=chunk_size)
        self.set_document_index(index)
        return index

    def add_to_document_index(self, documents: list[dict], processor, batch_size: int = 256,
                              name: str | None = None) -> DocumentIndex:
        """Embed `documents` and append them to the current index (their ids follow the indexed ones)."""
        if self.document_index is None:
            return self.build_document_index(documents, processor, batch_size=batch_size, name=name or "corpus")
        self.document_index.add(documents, *self.embed_documents(documents, processor, batch_size), name=name)
        return self.document_index

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
        (`query_embeds` as `embed_queries` returns them); a document scores as its best chunk."""
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


__all__ = ["ModalityFusion", "MultimodalRetrieverModel", "MultimodalRetrieverPreTrainedModel", "max_per_document",
           "ranking_loss"]
