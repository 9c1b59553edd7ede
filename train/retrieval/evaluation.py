"""Evaluating a retriever-generator: multiple-choice accuracy and, for open-ended questions, VQA accuracy and exact
match of RAG-Sequence generation, with the retrieved, the gold (`oracle`) or no documents; and the retriever's
recall@1, recall@5 and MRR, counted by document (passage) id.

The corpus searched is the model's own index (`searched_task` sets it up): by default the corpus it was trained with
plus the evaluated questions' documents, so training documents are distractors too.
"""

import numpy as np
import torch
from tqdm.auto import tqdm

from train.retrieval.answers import exact_match, vqa_accuracy
from train.retrieval.ranking import ranking_metrics, search_index
from train.retrieval.task import RetrievalExample, RetrievalTask, load_corpus, load_retrieval_task

DOCS_MODES = ("retrieved", "none", "oracle")
RANKING_DEPTH = 100
MAX_ANSWER_TOKENS = 16


def searched_task(model, processor, task: RetrievalTask, corpus: str | None = None, closed_corpus: bool = False,
                  name: str = "evaluation") -> RetrievalTask:
    """Point the model's index at the corpus to search for `task`, and return `task` with its gold ids in that corpus.

    Default: the model's saved index (its training corpus) with `task`'s documents that it lacks added (an open
    corpus). `corpus` (a JSONL file) replaces the saved index: its documents plus `task`'s. `closed_corpus`: `task`'s
    own documents only (its CSV's, and whatever corpus file it was read with).
    """
    retriever_processor = processor.retriever_processor
    if closed_corpus:
        model.index_corpus(task.corpus, processor, name=f"{name} documents")
        return task
    if corpus is not None:
        searched = task.searching(load_corpus(corpus))
        model.index_corpus(searched.corpus, processor, name=f"{corpus} + {name} documents")
        return searched
    index = model.retriever.document_index
    if index is None:
        raise ValueError("The model has no saved document index: give a corpus to search.")
    known = index.all_documents()
    searched = task.searching(known)
    model.retriever.add_to_document_index(searched.corpus[len(known):], retriever_processor,
                                          name=f"{index.name} + {name} documents")
    return searched


def documents_to_read(task: RetrievalTask, example: RetrievalExample, ranked_ids, docs: str, n_docs: int) -> list[dict]:
    if docs == "retrieved":
        return task.documents(ranked_ids[:n_docs])
    if docs == "oracle":
        return task.documents(example.gold_document_ids[:n_docs])
    return []


def evaluate_retriever_generator(model, processor, task: RetrievalTask, docs: str = "retrieved",
                                 n_docs: int | None = None, marginalize: bool | None = None,
                                 open_ended: bool | None = None, batch_size: int = 16) -> dict:
    """Answer quality (`docs` mode, top `n_docs` documents, marginalised unless `marginalize=False`) and retriever
    recall@1/@5 and MRR (over the top 100) of `model` on `task`, whose corpus is what the model's index holds.

    Multiple-choice questions give `accuracy`; `open_ended` (default: when the questions have reference answers)
    generates a free answer per question, RAG-Sequence style, and gives `vqa_accuracy` and `exact_match` against the
    reference answers (repeats counted; the right choice where there are none). Retrieved documents are weighted by
    the retriever's scores (the document posterior); gold (`oracle`) ones alike.
    """
    if docs not in DOCS_MODES:
        raise ValueError(f"docs must be one of {DOCS_MODES}, got {docs!r}")
    index = model.retriever.document_index
    if index is None or len(index) != len(task.corpus):
        raise ValueError("The model's index must hold the task's corpus: see searched_task.")
    n_docs = n_docs or model.config.n_docs
    ranked, scores = search_index(model.retriever, processor.retriever_processor, task,
                                  min(RANKING_DEPTH, len(task.corpus)), return_scores=True)
    result = {"n": len(task.examples), "docs": docs, "n_docs": 0 if docs == "none" else n_docs,
              "corpus": index.describe(), **ranking_metrics(ranked, task)}
    read = [documents_to_read(task, example, ids, docs, n_docs) for example, ids in zip(task.examples, ranked)]
    weights = [torch.tensor(row_scores[:len(row)]) if docs == "retrieved" and row else None
               for row_scores, row in zip(scores, read)]
    if docs == "retrieved":
        result["marginalize"] = model.config.marginalize if marginalize is None else marginalize
    if task.is_multiple_choice:
        result["accuracy"] = multiple_choice_accuracy(model, processor, task, read, weights, marginalize, batch_size)
    if open_ended if open_ended is not None else any(example.answers for example in task.examples):
        vqa, exact = [], []
        for example, row, row_weights in tqdm(list(zip(task.examples, read, weights)), desc="generating answers",
                                              disable=len(task.examples) < 50):
            answer = model.generate(processor, example.question, example.image, documents=row,
                                    doc_scores=row_weights, marginalize=marginalize,
                                    max_new_tokens=MAX_ANSWER_TOKENS, do_sample=False)
            vqa.append(vqa_accuracy(answer, example.annotator_answers))
            exact.append(exact_match(answer, example.reference_answers))
        result.update(vqa_accuracy=float(np.mean(vqa)), exact_match=float(np.mean(exact)))
    return result


def multiple_choice_accuracy(model, processor, task: RetrievalTask, read: list[list[dict]], weights: list,
                             marginalize: bool | None, batch_size: int) -> float:
    """The share of questions whose highest-scoring choice is the right one, reading `read[i]` for question i."""
    groups: dict[tuple[int, int], list[int]] = {}  # batches of questions with as many documents and choices
    for i, (example, row) in enumerate(zip(task.examples, read)):
        groups.setdefault((len(row), len(example.answer_choices)), []).append(i)
    correct = 0
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            examples = [task.examples[i] for i in batch]
            doc_scores = torch.stack([weights[i] for i in batch]) if weights[batch[0]] is not None else None
            predictions = model.predict_batch(processor, [e.question for e in examples], [e.image for e in examples],
                                              [e.answer_choices for e in examples], [read[i] for i in batch],
                                              doc_scores, marginalize=marginalize)
            correct += sum(p.label == e.label for p, e in zip(predictions, examples))
    return correct / len(task.examples)


def evaluate_saved_retriever_generator(model_dir: str, csv: str, corpus: str | None = None, docs: str = "retrieved",
                                       n_docs: int | None = None, concatenate: bool = False,
                                       closed_corpus: bool = False, open_ended: bool | None = None) -> dict:
    """Load the retriever-generator saved at `model_dir` and evaluate it on `csv` (see `searched_task` for the
    corpus searched)."""
    from modeling import RetrieverGeneratorForMultipleChoice
    from processing import RetrieverGeneratorProcessor

    model = RetrieverGeneratorForMultipleChoice.from_pretrained(model_dir).eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(model_dir)
    if closed_corpus:  # the CSV's documents and the corpus file's only
        task = searched_task(model, processor, load_retrieval_task(csv, corpus), closed_corpus=True, name=csv)
    else:
        task = searched_task(model, processor, load_retrieval_task(csv, documents_optional=True), corpus, name=csv)
    return evaluate_retriever_generator(model, processor, task, docs, n_docs,
                                        marginalize=False if concatenate else None, open_ended=open_ended)
