"""Ranking a task's corpus with the retriever, and measuring how well it ranks: what every stage and the evaluation
share."""

import numpy as np
import torch

from modeling.document_index import DocumentIndex
from modeling.modeling_retriever import max_per_document
from train.retrieval.task import RetrievalTask


def rank_documents(retriever, processor, task: RetrievalTask, k: int, return_scores: bool = False,
                   name: str = "corpus"):
    """(n_examples, k) ids of the corpus documents the retriever ranks highest for each question, best first (and,
    with `return_scores`, their retriever logits, the `doc_scores` the generator's document posterior uses).

    Builds (or rebuilds) the retriever's document index on `task.corpus`, named `name`.
    """
    retriever.build_document_index(task.corpus, processor, name=name)
    return search_index(retriever, processor, task, k, return_scores)


def search_index(retriever, processor, task: RetrievalTask, k: int, return_scores: bool = False):
    """As `rank_documents`, in the retriever's current index (whose documents must be `task.corpus`)."""
    query_embeds = retriever.embed_queries([e.question for e in task.examples], [e.image for e in task.examples],
                                           processor)
    scores, ids = retriever.retrieve(query_embeds, k)
    if return_scores:
        return ids.numpy(), (scores * retriever.logit_scale.detach().exp().cpu().float()).numpy()
    return ids.numpy()


class CorpusSnapshot:
    """The corpus embedded once with the retriever's current weights and held still while the query side trains, as
    RAG refreshes its index rather than back-propagating into it: a FAISS index (`DocumentIndex`) finds each query's
    nearest documents, and the stored chunk embeddings score the few candidate documents a step needs, with gradients
    through the queries. Nothing is (queries x corpus), so a step costs the same on 10 k or 200 k documents; only
    taking the snapshot grows with the corpus.
    """

    def __init__(self, retriever, processor, corpus: list[dict], factory: str = "Flat",
                 search_parameters: str | None = None):
        was_training = retriever.training
        retriever.eval()
        embeddings, self.chunk_documents = retriever.embed_documents(corpus, processor)  # (n_chunks, dim), (n_chunks,)
        retriever.train(was_training)
        self.retriever, self.embeddings = retriever, torch.from_numpy(np.asarray(embeddings))
        self.index = DocumentIndex.build(corpus, embeddings, self.chunk_documents, factory, search_parameters)

    def search(self, query_embeds: torch.Tensor, k: int) -> np.ndarray:
        """(n_queries, k) ids of the documents nearest each query, best first."""
        return self.index.search(query_embeds.detach().float().cpu().numpy(), k)[1]

    def score(self, query_embeds: torch.Tensor, document_ids: np.ndarray) -> torch.Tensor:
        """(n_queries, n_ids) retriever logits of the documents `document_ids` (each scored by its best chunk), with
        gradients through `query_embeds`."""
        document_ids = np.asarray(document_ids, dtype=np.int64)
        starts = np.searchsorted(self.chunk_documents, document_ids, "left")  # a document's chunks are contiguous
        ends = np.searchsorted(self.chunk_documents, document_ids, "right")
        chunks = np.concatenate([np.arange(start, end) for start, end in zip(starts, ends)])
        owners = torch.from_numpy(np.repeat(np.arange(len(document_ids)), ends - starts))
        logits = self.retriever.score(query_embeds, self.embeddings[chunks].to(query_embeds.device))
        return max_per_document(logits, owners, len(document_ids))


def ranking_metrics(ranked_ids: np.ndarray, task: RetrievalTask) -> dict[str, float | None]:
    """Recall@1, recall@5 (a gold document among the top k; a document is a passage, however many chunks it was
    embedded as) and mean reciprocal rank of the first gold document (0 when none is among the ranked ids), over the
    questions that name gold documents (None if none do)."""
    first_gold_rank = []
    for ids, example in zip(ranked_ids, task.examples):
        if not example.gold_document_ids:
            continue
        hits = np.flatnonzero(np.isin(ids, example.gold_document_ids))
        first_gold_rank.append(hits[0] + 1 if len(hits) else np.inf)
    if not first_gold_rank:
        return {"retriever_recall_at_1": None, "retriever_recall_at_5": None, "retriever_mrr": None}
    ranks = np.array(first_gold_rank)
    return {"retriever_recall_at_1": float(np.mean(ranks <= 1)), "retriever_recall_at_5": float(np.mean(ranks <= 5)),
            "retriever_mrr": float(np.mean(1.0 / ranks))}
