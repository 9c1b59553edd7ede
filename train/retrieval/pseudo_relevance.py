"""Which documents count as relevant to a training question when the data names none (RA-VQA's pseudo-relevance).

A document is pseudo-relevant when it holds the answer and the generator, reading it alone, answers right. "Holds
the answer" is read from the document itself: a text document must share a word with the question and contain
the right choice's text (`pseudo_relevant`); an image document has no text to read, but when the corpus holds a copy of the question's own
picture (`picture_neighbours`), that copy is the document about it and the other pictures are not. Candidates come from
three neighbourhoods (`pseudo_relevance_labels`): the retriever's own ranking, the question's words
(`lexical_neighbours`) and its picture.
"""

import numpy as np
import torch

from train.retrieval.task import RetrievalTask


def pseudo_relevant(document: dict, choices: list[str], label: int, shares_a_word: bool = True,
                    is_picture_copy: bool | None = None) -> bool | None:
    """RA-VQA's first test, does the document hold the answer. A text document: True when it shares a word with the
    question (`lexical_similarity`) and contains the right choice's text and no other choice's; False otherwise. An
    image document: `is_picture_copy` (whether it shows the question's own picture; None when the corpus holds no
    copy of it, and then only the generator can judge).

    Why the shared word: RA-VQA checks passages a pretrained retriever found, so they are about the question; a
    retriever trained from scratch finds passages at random, and one that names the right colour by chance (one
    in eight on the bundled task) would be taken for the source of the answer.
    """
    if document.get("text") is None:
        return None if is_picture_copy is None else bool(is_picture_copy)
    text = document["text"].lower()
    right = choices[label].lower() in text
    return bool(shares_a_word) and right and not any(c.lower() in text for i, c in enumerate(choices) if i != label)


def lexical_similarity(task: RetrievalTask):
    """(n_examples, n_corpus) sparse TF-IDF cosine of each question with each text document (scikit-learn's
    `TfidfVectorizer`, English stop words left out; 0 for image documents): which documents speak of the question's
    things at all, before the dense retriever knows anything (rare words such as a catalogue's name carry the
    weight, as they would for BM25)."""
    from scipy.sparse import csr_matrix
    from sklearn.feature_extraction.text import TfidfVectorizer

    text_ids = np.array([i for i, doc in enumerate(task.corpus) if doc["text"] is not None])
    if not len(text_ids):
        return csr_matrix((len(task.examples), len(task.corpus)))
    questions = [example.question for example in task.examples]
    texts = [task.corpus[i]["text"] for i in text_ids]
    vectorizer = TfidfVectorizer(stop_words="english").fit(texts + questions)
    similarity = (vectorizer.transform(questions) @ vectorizer.transform(texts).T).tocoo()  # (n_examples, n_text)
    return csr_matrix((similarity.data, (similarity.row, text_ids[similarity.col])),
                      shape=(len(task.examples), len(task.corpus)))


def lexical_neighbours(task: RetrievalTask, depth: int, similarity=None) -> np.ndarray:
    """(n_examples, depth) ids of the text documents nearest each question by `lexical_similarity` (given, or
    computed), -1 where fewer documents share a word with the question: the candidates pseudo-relevance starts
    from when the dense retriever knows nothing yet."""
    similarity = (lexical_similarity(task) if similarity is None else similarity).toarray()
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :depth]
    return np.where(np.take_along_axis(similarity, order, axis=1) > 0, order, -1)


def picture_neighbours(retriever, processor, task: RetrievalTask, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """By the retriever's image tower, for each question's picture: its `depth` nearest image documents ((n_examples,
    depth) ids, best first; -1 where the question has no picture or the corpus fewer pictures), and the image
    document that shows the picture itself ((n_examples,) id, -1 where none does): the mutual nearest neighbour,
    the image document nearest the picture whose nearest question picture is that one (ties kept: questions may
    share a picture).

    Why mutual: every picture has a nearest image document, copy or not; a copy alone picks the picture back among
    all the questions' pictures. It needs an image tower that already matches a picture to its copies: pretrained
    (SigLIP), or warmed up on the task's images (`train.retrieval.retriever_training.warm_up_image_tower`).
    """
    image_ids = np.array([i for i, doc in enumerate(task.corpus) if doc["image"] is not None])
    with_picture = np.array([i for i, example in enumerate(task.examples) if example.image is not None])
    nearest = np.full((len(task.examples), depth), -1, dtype=np.int64)
    copies = np.full(len(task.examples), -1, dtype=np.int64)
    if not len(image_ids) or not len(with_picture):
        return nearest, copies
    retriever.eval()
    documents = retriever.embed_documents(task.documents(image_ids.tolist()), processor)  # (n_image_docs, dim)
    pictures = retriever.embed_documents([{"text": None, "image": task.examples[i].image} for i in with_picture],
                                         processor)  # (n_pictures, dim): the questions' pictures, same tower
    similarity = pictures @ documents.T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :depth]
    nearest[with_picture, :order.shape[1]] = image_ids[order]
    best = order[:, 0]
    picked_back = similarity[np.arange(len(best)), best] >= similarity.max(0)[best] - 1e-6
    copies[with_picture[picked_back]] = image_ids[best[picked_back]]
    return nearest, copies


@torch.no_grad()
def pseudo_relevance_labels(model, processor, task: RetrievalTask, doc_embeddings: torch.Tensor, depth: int = 10,
                            use_generator: bool = True, batch_size: int = 16) -> list[list[int]]:
    """Per training question, the ids of its pseudo-relevant documents among three neighbourhoods of `depth`
    documents each: the retriever's nearest (text and image fused, the index's own ranking), the text documents
    nearest the question's words (`lexical_neighbours`), and the image documents nearest its picture
    (`picture_neighbours`).

    Why three: a retriever trained from scratch starts knowing nothing, so its fused neighbours are noise (the
    holds-the-answer test keeps them out); the words of the question find the documents that name the same things, and the
    picture finds pictures like it.

    A document is positive when it holds the answer (`pseudo_relevant`) and the generator, reading it alone,
    answers right; when one of the two cannot judge, the other decides. `use_generator=False` (before the
    generator has learned anything) keeps the first test alone.
    """
    retriever, template = model.retriever, model.config.document_template
    by_image, copies = picture_neighbours(retriever, processor.retriever_processor, task, depth)
    similarity = lexical_similarity(task)
    by_words = lexical_neighbours(task, depth, similarity)
    neighbourhoods = [by_words] + ([by_image] if (by_image >= 0).any() else [])
    positives = []
    for start in range(0, len(task.examples), batch_size):
        examples, rows = task.examples[start:start + batch_size], slice(start, start + batch_size)
        queries = processor.retriever_processor.process_queries([e.question for e in examples],
                                                                [e.image for e in examples]).to(retriever.device)
        fused = (retriever.encode_queries(**queries) @ doc_embeddings.T).topk(depth, dim=-1).indices.cpu().numpy()
        # Where a neighbourhood has no document (-1), the fused ones stand in: every question of a batch reads as
        # many candidates, which the generator's batched scoring needs.
        ids = np.concatenate([fused] + [np.where(n[rows] >= 0, n[rows], fused) for n in neighbourhoods], 1).tolist()
        answered = None
        if use_generator:
            inputs = processor.marginal_inputs([e.question for e in examples], [e.image for e in examples],
                                               [task.documents(row) for row in ids],
                                               [e.answer_choices for e in examples], template)
            scores = model.score_choices(**inputs.to(model.generator.device))  # (batch, candidates, choices)
            answered = (scores.argmax(-1).cpu() == torch.tensor([e.label for e in examples])[:, None]).tolist()
        shares_a_word = similarity[rows].toarray() > 0  # (batch, n_corpus)
        for b, (example, row) in enumerate(zip(examples, ids)):
            copy = copies[start + b]
            keep = []
            for k, doc_id in enumerate(row):
                holds_answer = pseudo_relevant(task.corpus[doc_id], example.answer_choices, example.label,
                                               shares_a_word[b, doc_id], None if copy < 0 else doc_id == copy)
                by_generator = answered[b][k] if answered is not None else None
                if holds_answer is False or by_generator is False or (holds_answer is None and by_generator is None):
                    continue
                keep.append(doc_id)
            positives.append(list(dict.fromkeys(keep)))
    return positives
