"""Which documents count as relevant to a training question when the data names none: RA-VQA's pseudo-relevance
(Lin & Byrne, 2022), for any corpus.

A document *holds the answer* when one of the question's acceptable answers (reference answers and aliases, the right
choice) occurs in its text as whole normalised words, whatever other candidates it names (`holds_answer`). A picture
without text cannot be read that way. The generator judges: reading the document alone must raise its belief in the
answer above what it believes with no document (`generator_gains`). A candidate is pseudo-relevant when neither test
says no and at least one says yes; so pictures are judged by the generator, and a picture with its article by both.
Before the generator has been warm-started on the task it judges only what the text test cannot (`judge_texts=False`):
a reader that has not yet learnt the task vetoes the gold passage about as often as any other passage naming the
answer (the first labels' recall of the gold documents with and without that veto: 0.91 and 0.98 on `retrieval_vqa`,
0.75 and 0.98 on its `--passages` variant, 0.59 and 0.91 on the encyclopedia, at the same precision;
docs/retriever_generator.md, "Measured"). RA-VQA's refinement is its trained reader's.

Candidates come from up to three neighbourhoods (`pseudo_relevance_labels`): the retriever's own ranking (as in
RA-VQA, once it can rank), the text documents nearest the question's words (TF-IDF, `lexical_neighbours`), and the
documents whose pictures are nearest the question's (the image tower, `image_neighbours`), which is how a retriever
that starts from scratch finds candidates at all. `picture_copies=True` adds the rule for corpora whose pictures are
copies of the questions' own: a copy found (mutual nearest neighbours) is the only relevant picture.

Both tests pass documents that merely name or show the answer: in a catalogue of digits and their colours, every
passage giving another digit the same colour holds the answer, and a generator that has not yet learnt to match the
picture's digit to the passage's cannot tell them apart. `best_only=True` keeps, of the passing candidates, only the
one the retriever ranks highest: DPR's distant supervision (the highest-ranked passage holding the answer), i.e. hard
EM (Min et al., 2019). A retriever trained once on every passing candidate ranks the one that is right for the
question's own reasons (its digit, its picture) above those that are right by chance, so a second round on its
choice learns from far cleaner labels. Pictures without text get that choice at once (`nearest_picture_only`, the
default): the generator sees that a picture shows the answer, not that it is the question's own, so only the passing
one nearest the question's picture counts, the image tower being the prior ranker.
"""

import numpy as np
import torch

from train.retrieval.answers import contains_answer
from train.retrieval.ranking import CorpusSnapshot
from train.retrieval.task import RetrievalTask

CANDIDATE_SOURCES = ("retriever", "words", "pictures")


def holds_answer(document: dict, answers: list[str]) -> bool | None:
    """Whether the document's text names one of `answers` (whole words, normalised); None for a picture without text,
    which only the generator can judge."""
    return contains_answer(document["text"], answers) if document.get("text") else None


def lexical_neighbours(task: RetrievalTask, depth: int) -> np.ndarray:
    """(n_examples, depth) ids of the documents with text nearest each question by TF-IDF cosine (scikit-learn's
    `TfidfVectorizer`, English stop words left out), -1 where fewer share a word with the question: the documents that
    speak of the question's things before the dense retriever knows anything (rare words such as a name carry the
    weight, as they would for BM25)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    nearest = np.full((len(task.examples), depth), -1, dtype=np.int64)
    text_ids = np.array([i for i, doc in enumerate(task.corpus) if doc.get("text")])
    if not len(text_ids):
        return nearest
    questions = [example.question for example in task.examples]
    texts = [task.corpus[i]["text"] for i in text_ids]
    vectorizer = TfidfVectorizer(stop_words="english").fit(texts + questions)
    similarity = (vectorizer.transform(questions) @ vectorizer.transform(texts).T).tocsr()  # sparse (n, n_text)
    for row in range(len(questions)):
        start, end = similarity.indptr[row], similarity.indptr[row + 1]
        columns, values = similarity.indices[start:end], similarity.data[start:end]
        best = columns[np.lexsort((columns, -values))][:depth]  # highest first, ties by id
        nearest[row, :len(best)] = text_ids[best]
    return nearest


@torch.no_grad()
def image_neighbours(retriever, processor, task: RetrievalTask, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """By the retriever's image tower, for each question's picture: the `depth` documents with the nearest pictures
    ((n_examples, depth) ids, best first; -1 where the question has no picture or the corpus fewer pictures), and the
    document whose picture is the question's own ((n_examples,) id, -1 where none is): the mutual nearest neighbour,
    the document picture nearest the question's whose nearest question picture is that one (ties kept: questions may
    share a picture). Why mutual: every picture has a nearest document picture, copy or not; a copy alone picks the
    question's picture back among all the questions' pictures."""
    with_picture = np.array([i for i, example in enumerate(task.examples) if example.image is not None])
    image_ids = np.array([i for i, doc in enumerate(task.corpus) if doc.get("image") is not None])
    nearest = np.full((len(task.examples), depth), -1, dtype=np.int64)
    copies = np.full(len(task.examples), -1, dtype=np.int64)
    if not len(image_ids) or not len(with_picture):
        return nearest, copies
    retriever.eval()

    def embed(images: list) -> torch.Tensor:
        return torch.cat([retriever.encode_images(**processor._image_inputs(images[start:start + 256]))
                          for start in range(0, len(images), 256)])

    documents = embed([task.corpus[i]["image"] for i in image_ids])  # (n_pictured_docs, dim)
    pictures = embed([task.examples[i].image for i in with_picture])  # (n_pictures, dim), the same tower
    scores, order = exact_search(documents, pictures, min(depth, len(image_ids)))  # (n_pictures, depth) each
    nearest[with_picture, :order.shape[1]] = image_ids[order]
    best = order[:, 0]
    best_question_score = exact_search(pictures, documents[best], 1)[0][:, 0]  # each best document's nearest picture
    picked_back = scores[:, 0] >= best_question_score - 1e-6
    copies[with_picture[picked_back]] = image_ids[best[picked_back]]
    return nearest, copies


def nearest_first(pictures: list[int], by_picture: np.ndarray) -> int:
    """Of candidate `pictures`, the one the image tower ranks nearest the question's picture (`by_picture`: its
    ranking, best first); those it did not rank come after, in their candidates' order."""
    rank = {int(doc_id): position for position, doc_id in enumerate(by_picture) if doc_id >= 0}
    return min(pictures, key=lambda doc_id: rank.get(doc_id, len(rank)))  # min keeps the first of equals


def exact_search(vectors: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k), of the `k` rows of `vectors` with the largest inner product with each
    query, best first (FAISS exact search: no (queries x vectors) matrix is kept)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors.float().cpu().numpy()))
    return index.search(np.ascontiguousarray(queries.float().cpu().numpy()), k)


@torch.no_grad()
def generator_gains(model, processor, examples: list, documents: list[list[dict]]) -> torch.Tensor:
    """(batch, n_candidates): how much reading each candidate document alone raises the generator's log-probability of
    the question's answer over reading no document — of the right choice among the choices (multiple choice), of the
    target answer's tokens (open-ended). Every question has the same number of candidates."""
    choices, labels = zip(*(e.scored_choices for e in examples))
    inputs = processor.marginal_inputs([e.question for e in examples], [e.image for e in examples],
                                       [[None, *row] for row in documents], list(choices),
                                       model.config.document_template)
    scores = model.score_choices(**inputs.to(model.generator.device)).float().cpu()  # (batch, 1 + candidates, choices)
    if scores.shape[-1] > 1:
        scores = scores.log_softmax(-1)
    right = scores.gather(-1, torch.tensor(labels)[:, None, None].expand(-1, scores.shape[1], 1))[..., 0]
    return right[:, 1:] - right[:, :1]


@torch.no_grad()
def pseudo_relevance_labels(model, processor, task: RetrievalTask, depth: int = 10, use_generator: bool = True,
                            sources: tuple[str, ...] = CANDIDATE_SOURCES, picture_copies: bool = False,
                            margin: float = 0.0, best_only: bool = False, nearest_picture_only: bool = True,
                            judge_texts: bool = True, batch_size: int = 16) -> list[list[int]]:
    """Per training question, the ids of its pseudo-relevant documents among `depth` candidates from each of
    `sources` ("retriever": the retriever's ranking, "words": `lexical_neighbours`, "pictures": `image_neighbours`).

    A candidate is positive when neither test says no and one says yes: it holds an acceptable answer
    (`holds_answer`), and, with `use_generator`, reading it raises the generator's belief in the answer by more than
    `margin` nats (`generator_gains`): for every candidate with `judge_texts` (once the generator has been
    warm-started), else only for pictures without text. With `best_only`, only the
    positive the retriever scores highest is kept. With `nearest_picture_only`, of the positive pictures without
    text (which only the generator judged), only the one the image tower ranks nearest the question's picture counts
    (DPR's distant supervision, the prior ranker's best positive, where the only prior is a picture's likeness);
    documents with text keep their text test.
    """
    retriever = model.retriever
    neighbourhoods = []
    by_picture, copies = image_neighbours(retriever, processor.retriever_processor, task, depth)
    if "words" in sources:
        neighbourhoods.append(lexical_neighbours(task, depth))
    if "pictures" in sources:
        neighbourhoods.append(by_picture)
    ranks = "retriever" in sources or best_only
    snapshot = CorpusSnapshot(retriever, processor.retriever_processor, task.corpus) if ranks else None
    positives = []
    for start in range(0, len(task.examples), batch_size):
        examples, rows = task.examples[start:start + batch_size], slice(start, start + batch_size)
        candidates = [n[rows] for n in neighbourhoods]
        if ranks:
            queries = retriever.encode_queries(**processor.retriever_processor.process_queries(
                [e.question for e in examples], [e.image for e in examples]).to(retriever.device))
        if "retriever" in sources:
            candidates.insert(0, snapshot.search(queries, min(depth, len(task.corpus))))
        ids = np.concatenate(candidates, 1)
        # Where a neighbourhood has fewer documents (-1), the first one found stands in (document 0 where none was):
        # every question of a batch reads as many candidates, which the generator's batched scoring needs.
        found = (ids >= 0).any(1)
        first = ids[np.arange(len(ids)), (ids >= 0).argmax(1)]
        ids = np.where(ids >= 0, ids, np.where(found, first, 0)[:, None])
        holds = [[holds_answer(task.corpus[doc_id], example.reference_answers) for doc_id in row]
                 for example, row in zip(examples, ids)]  # (batch, candidates): True, False, None for a bare picture
        if picture_copies:
            holds = [[bool(doc_id == copy) if h is None and copy >= 0 else h for h, doc_id in zip(row, id_row)]
                     for row, id_row, copy in zip(holds, ids, copies[rows])]
        judges = [[use_generator and (judge_texts or h is None) for h in row] for row in holds]
        gains = None  # the generator reads the batch only when it judges one of its candidates
        if any(map(any, judges)):
            gains = generator_gains(model, processor, examples, [task.documents(row) for row in ids]).numpy()
        for b, row in enumerate(ids):
            keep, bare_pictures = [], []
            if not found[b]:
                positives.append([])
                continue
            for k, doc_id in enumerate(row):
                judged = bool(gains[b, k] > margin) if judges[b][k] else None
                if holds[b][k] is not False and judged is not False and (holds[b][k] or judged):
                    (bare_pictures if nearest_picture_only and holds[b][k] is None else keep).append(int(doc_id))
            if bare_pictures:
                keep.append(nearest_first(bare_pictures, by_picture[start + b]))
            keep = list(dict.fromkeys(keep))
            if best_only and keep:
                keep = [keep[int(snapshot.score(queries[b:b + 1], np.array(keep))[0].argmax())]]
            positives.append(keep)
    return positives
