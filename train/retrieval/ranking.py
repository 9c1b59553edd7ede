"""Ranking a task's corpus with the retriever, and measuring how well it ranks: what every stage and the evaluation
share."""

import numpy as np
import torch

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


def corpus_embeddings(retriever, processor, corpus: list[dict]) -> tuple[torch.Tensor, torch.LongTensor]:
    """The corpus's chunk embeddings (n_chunks, dim) with the retriever's current weights and each chunk's document
    (n_chunks,): what `MultimodalRetrieverModel.score` and `max_per_document` rank a whole corpus with."""
    was_training = retriever.training
    retriever.eval()
    embeddings, document_ids = retriever.embed_documents(corpus, processor)
    retriever.train(was_training)
    return torch.from_numpy(embeddings).to(retriever.device), torch.from_numpy(document_ids)


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
