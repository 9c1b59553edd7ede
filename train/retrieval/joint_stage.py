"""Stage 3: the generator and the retriever trained together on the top `n_docs` retrieved documents
(`train_joint_epoch`, one epoch; the pipeline relabels and validates between epochs).

The generator reads each document in its own sequence and is trained with the marginal likelihood over them
(RAG-Sequence), wrong documents included; the retriever's query side is trained through the same loss by way of
`doc_scores`; each document read is judged on its own (`document_relevance_loss`: the answer from a relevant document,
no answer from an irrelevant one); and where relevant documents are known (gold, or pseudo-relevant), the
retriever's InfoNCE is added, over the batch's candidates: every question's relevant documents and its
`n_candidates` nearest in the index, so each question's candidates are the others' in-batch negatives. Nothing scores
the whole corpus (`CorpusSnapshot`): a step costs the same on a corpus of any size. Open-ended questions score their
target answer alone (one "choice"), so the same code trains both answer kinds.
"""

import json
import time

import numpy as np
import torch

from modeling.modeling_retriever import ranking_loss
from modeling.transformers_compat import disable_activation_checkpointing, is_activation_checkpointing
from train.retrieval.ranking import CorpusSnapshot
from train.retrieval.task import RetrievalTask


def document_relevance_loss(doc_choice_scores: torch.Tensor, labels: torch.LongTensor,
                            relevant: torch.Tensor) -> torch.Tensor:
    """Teach the generator to judge each document it reads: (batch, n_docs, choices) per-document choice scores,
    (batch,) right choices, (batch, n_docs) bool relevant documents -> a scalar.

    With a relevant document, the right choice (cross-entropy); with an irrelevant one, no choice at all (the
    cross-entropy to the uniform distribution over the choices). Why: the marginal likelihood alone never asks
    this. On training questions the retriever ranks the right document first, so the wrong documents get little
    posterior weight and their choice scores little gradient; the generator then answers each wrong document's
    answer with confidence, and at test time, where the posterior is less sure, those wrong votes outweigh the right
    one. A generator that spreads its choice scores evenly over a wrong document leaves the marginal's argmax to
    the documents that do answer the question, so reading more documents cannot hurt. (With one choice, open-ended,
    there is nothing to spread: the loss is zero.)
    """
    log_probs = doc_choice_scores.float().log_softmax(-1)  # (batch, n_docs, choices)
    right = labels.to(log_probs.device)[:, None, None].expand(-1, log_probs.shape[1], 1)  # (batch, n_docs, 1)
    answer = -log_probs.gather(-1, right)[..., 0]
    abstain = -log_probs.mean(-1) - np.log(log_probs.shape[-1])  # 0 for the uniform distribution
    return torch.where(relevant.to(log_probs.device), answer, abstain).mean()


def train_joint_epoch(model, processor, task: RetrievalTask, relevance: list[list[int]] | None = None,
                      n_docs: int = 5, epochs: float = 1, batch_size: int = 8, generator_learning_rate: float = 5e-4,
                      retriever_learning_rate: float = 2e-4, retrieval_loss_weight: float = 1.0,
                      document_loss_weight: float = 1.0, n_candidates: int = 32, seed: int = 0,
                      log_every: int = 25) -> list[dict]:
    """Train for `epochs` (at most one) on the top `n_docs` retrieved documents, wrong ones included, with the
    marginal likelihood, the retriever's query side through the same loss via `doc_scores` (end to end, as RAG).

    The document side is refreshed, not back-propagated: the corpus is re-embedded and indexed with the current
    weights first (`CorpusSnapshot`; the retriever's towers are shared by queries and documents, so training the query
    side moves the documents too), and within the epoch the document embeddings are constants. `relevance` (per
    question, ids of relevant documents: the gold ones, or pseudo-relevant ones) adds, for the questions that have
    some, the retriever's InfoNCE over the batch's candidates (every question's relevant documents and its
    `n_candidates` nearest) and the per-document loss (`document_relevance_loss`). Every question of `task` has the
    same number of choices (multiple choice), or none (open-ended). Returns the log, with the snapshot's time.
    """
    retriever, generator, template = model.retriever, model.generator, model.config.document_template
    if is_activation_checkpointing(generator):  # it turns the KV cache the scoring reuses off
        disable_activation_checkpointing(generator)
    generator_params = [p for p in generator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": generator_params, "lr": generator_learning_rate},
                                   {"params": list(retriever.parameters()), "lr": retriever_learning_rate}],
                                  weight_decay=0.0)
    rng = np.random.default_rng(seed)
    n_examples, n_corpus = len(task.examples), len(task.corpus)
    total_steps = max(1, int(np.ceil(min(epochs, 1.0) * n_examples / batch_size)))
    schedule = lambda step: 0.5 * (1 + np.cos(np.pi * step / total_steps))  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    started = time.perf_counter()
    snapshot = CorpusSnapshot(retriever, processor.retriever_processor, task.corpus)
    snapshot_seconds = time.perf_counter() - started
    model.train()
    order = rng.permutation(n_examples)
    log, running = [], []
    for step in range(total_steps):
        rows = order[step * batch_size:(step + 1) * batch_size]
        examples = [task.examples[i] for i in rows]
        choices, labels = zip(*(e.scored_choices for e in examples))
        labels = torch.tensor(labels)
        queries = retriever.encode_queries(**processor.retriever_processor.process_queries(
            [e.question for e in examples], [e.image for e in examples]).to(retriever.device))  # (batch, dim)
        nearest = snapshot.search(queries, min(max(n_docs, n_candidates), n_corpus))  # (batch, depth), best first
        relevant = [relevance[i] if relevance is not None else [] for i in rows]
        candidates = np.unique(np.concatenate([nearest.ravel(), *map(np.asarray, relevant)]).astype(np.int64))
        candidate_scores = snapshot.score(queries, candidates)  # (batch, n_candidates) logits, with grad
        read = nearest[:, :n_docs]  # (batch, n_docs): what the generator reads
        doc_scores = candidate_scores.gather(1, torch.from_numpy(np.searchsorted(candidates, read)).to(
            candidate_scores.device))  # the retriever's logits of the documents read
        inputs = processor.marginal_inputs([e.question for e in examples], [e.image for e in examples],
                                           [task.documents(row) for row in read.tolist()], list(choices), template)
        output = model(**inputs.to(generator.device), doc_scores=doc_scores, labels=labels)
        loss = output.loss
        retrieval_loss, document_loss = torch.zeros(()), torch.zeros(())
        known = [b for b, ids_b in enumerate(relevant) if ids_b]
        if known:
            targets = torch.from_numpy(np.stack([np.isin(candidates, relevant[b]) for b in known]))
            retrieval_loss = ranking_loss(candidate_scores[known], targets.to(candidate_scores.device))
            read_relevant = torch.from_numpy(np.stack([np.isin(read[b], relevant[b]) for b in known]))
            document_loss = document_relevance_loss(output.doc_choice_scores[known], labels[known], read_relevant)
            loss = loss + retrieval_loss_weight * retrieval_loss + document_loss_weight * document_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
        optimizer.step()
        scheduler.step()
        running.append((float(output.loss.detach()), float(retrieval_loss.detach()), float(document_loss.detach()),
                        float((output.logits.argmax(-1).cpu() == labels).float().mean())))
        if (step + 1) % log_every == 0 or step + 1 == total_steps:
            mean = np.mean(running, axis=0)
            log.append({"step": step + 1, "snapshot_seconds": round(snapshot_seconds, 2),
                        "marginal_loss": round(float(mean[0]), 4), "retrieval_loss": round(float(mean[1]), 4),
                        "document_loss": round(float(mean[2]), 4), "train_accuracy": round(float(mean[3]), 4)})
            print(json.dumps(log[-1]), flush=True)
            running = []
    model.eval()
    return log
