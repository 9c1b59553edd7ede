"""The seed CSV reader of the retriever-generator (multiple-choice and open-ended answers, text, image and image+text
documents, validation splits, open corpora), and the two bundled retrieval tasks."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.bundled_data.encyclopedia import write_encyclopedia
from train.bundled_data.retrieval_vqa import ARCHIVE_QUESTION, painted, write_retrieval_vqa
from train.common.cli import InvalidInput, run_cli
from train.retrieval.answers import contains_answer
from train.retrieval.task import RETRIEVAL_COLUMNS, load_retrieval_task
from train.train_retriever_generator import TrainRetrieverGeneratorArguments, main

GOOD_ROW = {"question_text": "What colour is this digit?", "question_image": "q.png",
            "answer_choices": json.dumps(["red", "blue"]), "label": "1",
            "documents": json.dumps(["The digit is blue.", {"image": "doc.png"}, {"text": "Unrelated."}])}


def write_csv(folder, rows: list[dict], columns=RETRIEVAL_COLUMNS):
    Image.new("L", (8, 8), 200).save(folder / "q.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "doc.png")
    path = folder / "questions.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_reads_questions_and_builds_the_corpus_from_every_row_and_the_corpus_file(tmp_path):
    second = {**GOOD_ROW, "question_image": "", "documents": json.dumps(["The digit is blue.", "Another fact."])}
    (tmp_path / "corpus.jsonl").write_text('"A distractor."\n{"image": "doc.png"}\n\n{"text": "Another fact."}\n')
    task = load_retrieval_task(write_csv(tmp_path, [GOOD_ROW, second]), tmp_path / "corpus.jsonl")

    first, other = task.examples
    assert (first.question, first.answer_choices, first.label) == ("What colour is this digit?", ["red", "blue"], 1)
    assert first.image.size == (8, 8) and other.image is None
    # Documents are stored once however often they are named; ids are positions in the corpus.
    assert [doc["text"] for doc in task.corpus] == ["The digit is blue.", None, "Unrelated.", "Another fact.",
                                                    "A distractor."]
    assert task.corpus[1]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert first.gold_document_ids == [0, 1, 2] and other.gold_document_ids == [0, 3]


@pytest.mark.parametrize("change, message", [
    ({"label": "2"}, "row 1, column 'label': 2 is out of range for 2 answer choices"),
    ({"label": "first"}, "row 1, column 'label': 'first' is not an integer"),
    ({"answer_choices": "[\"red\", "}, "row 1, column 'answer_choices': invalid JSON"),
    ({"answer_choices": json.dumps(["red"])}, "row 1, column 'answer_choices': expected a JSON list of at least 2"),
    ({"documents": "not json"}, "row 1, column 'documents': invalid JSON"),
    ({"documents": "[]"}, "row 1, column 'documents': expected a non-empty JSON list"),
    ({"documents": json.dumps([{"video": "x.mp4"}])}, "row 1, column 'documents', item 1: a document must be"),
    ({"documents": json.dumps([{"image": "doc.png", "caption": "x"}])},
     "row 1, column 'documents', item 1: a document must be"),
    ({"documents": json.dumps([{"image": "doc.png", "text": " "}])},
     "row 1, column 'documents', item 1: a document must be"),
    ({"documents": json.dumps([{"image": "missing.png"}])}, "row 1, column 'documents', item 1: image file not found"),
    ({"question_image": "missing.png"}, "row 1, column 'question_image': image file not found"),
    ({"question_text": " "}, "row 1, column 'question_text': missing or empty"),
])
def test_a_bad_value_is_reported_by_file_row_and_column(tmp_path, change, message):
    path = write_csv(tmp_path, [{**GOOD_ROW, **change}])
    with pytest.raises(InvalidInput) as error:
        load_retrieval_task(path)
    assert str(error.value).startswith(f"{path}, {message}")


def test_a_missing_column_is_named(tmp_path):
    path = write_csv(tmp_path, [GOOD_ROW], columns=RETRIEVAL_COLUMNS[:-1])
    with pytest.raises(InvalidInput, match="missing column\\(s\\) documents"):
        load_retrieval_task(path)
    no_answers = write_csv(tmp_path, [GOOD_ROW], columns=["question_text", "question_image", "documents"])
    with pytest.raises(InvalidInput, match="missing column\\(s\\) answer_choices, label .*and/or answers"):
        load_retrieval_task(no_answers)


def test_a_bad_corpus_line_is_reported_by_file_and_line(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('"fine"\n{"text": \n')
    with pytest.raises(InvalidInput, match="corpus.jsonl, line 2: invalid JSON"):
        load_retrieval_task(write_csv(tmp_path, [GOOD_ROW]), tmp_path / "corpus.jsonl")


def test_training_cli_refuses_invalid_input_in_one_line_with_status_2(tmp_path, capsys):
    path = write_csv(tmp_path, [GOOD_ROW], columns=RETRIEVAL_COLUMNS[:-1])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, TrainRetrieverGeneratorArguments, argv=[
            "--preset", "tiny", "--train_csv", str(path), "--output_dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "documents" in error and "Traceback" not in error


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("retrieval_vqa")
    sizes = write_retrieval_vqa(folder, n_train_catalogues=6, n_val_catalogues=2, n_test_catalogues=3,
                                n_train_archive=20, n_val_archive=6, n_test_archive=10, n_distractor_catalogues=2,
                                n_distractor_drawings=5)
    return folder, sizes


def test_bundled_task_asks_about_unseen_facts_with_text_and_image_documents(bundled):
    folder, sizes = bundled
    train = load_retrieval_task(folder / "train.csv", folder / "corpus.jsonl")
    val = load_retrieval_task(folder / "val.csv")
    test = load_retrieval_task(folder / "test.csv", folder / "corpus.jsonl")
    assert (len(train.examples), len(val.examples), len(test.examples), sizes["corpus"]) == (80, 26, 40, 25)

    def gold_texts(task):
        return {task.corpus[i]["text"] for e in task.examples for i in e.gold_document_ids} - {None}

    def catalogues(task):
        return {e.question.split(" catalogue")[0] for e in task.examples if e.question != ARCHIVE_QUESTION}

    def drawings(split):  # the load_digits indices its questions show
        return {int(Path(row["question_image"]).stem) for row in csv.DictReader(open(folder / f"{split}.csv"))}

    # Validation and test facts, catalogues and drawings were never seen in training, and validation and test share
    # none: validation measures what test does. Every split reads text and image documents.
    for other in (val, test):
        assert not gold_texts(train) & gold_texts(other) and not catalogues(train) & catalogues(other)
    assert not catalogues(val) & catalogues(test)
    assert not drawings("train") & drawings("val") and not drawings("train") & drawings("test")
    assert not drawings("val") & drawings("test")
    assert all(index % 5 == 0 for index in drawings("val") | drawings("test"))  # load_digits' test split
    for task in (train, val, test):
        kinds = {task.corpus[e.gold_document_ids[0]]["image"] is None for e in task.examples}
        assert kinds == {True, False}
        assert all(e.answer_choices[e.label] in task.corpus[e.gold_document_ids[0]]["text"]
                   for e in task.examples if e.question != ARCHIVE_QUESTION)


def test_bundled_task_says_when_held_out_drawings_run_out(tmp_path):
    """load_digits' test split (360 drawings) shows the validation and test questions; archives that take nearly all
    of them leave some digit without a drawing for the catalogue questions, which is said, not a KeyError."""
    with pytest.raises(ValueError, match="too few drawings left"):
        write_retrieval_vqa(tmp_path, n_train_catalogues=1, n_val_catalogues=1, n_test_catalogues=1,
                            n_train_archive=2, n_val_archive=10, n_test_archive=345, n_distractor_catalogues=1,
                            n_distractor_drawings=2)


def test_bundled_answers_are_uniform_over_choice_positions(bundled):
    """Without documents nothing but chance picks the answer: its position among the choices is uniform."""
    folder, _ = bundled
    labels = [e.label for e in load_retrieval_task(folder / "train.csv").examples]
    assert set(labels) == {0, 1, 2, 3} and max(np.bincount(labels)) < 0.45 * len(labels)


def test_archive_documents_paint_the_questioned_drawing_itself():
    drawing = Image.fromarray(np.array([[0, 255], [128, 0]], dtype=np.uint8), mode="L")
    assert np.array_equal(np.asarray(painted(drawing, "red")),
                          [[[0, 0, 0], [230, 40, 40]], [[115, 20, 20], [0, 0, 0]]])


def test_a_faiss_id_of_minus_one_is_skipped_and_reported(tmp_path, caplog):
    task = load_retrieval_task(write_csv(tmp_path, [GOOD_ROW]))
    assert len(task.corpus) == 3
    with caplog.at_level("WARNING", logger="train.retrieval.task"):
        documents = task.documents(np.array([2, 0, -1, -1]))  # FAISS pads a short result list with -1
    assert [doc["text"] for doc in documents] == ["Unrelated.", "The digit is blue."]  # never corpus[-1]
    assert "2 of 4 retrieved document ids are -1" in caplog.text


def test_the_document_index_skips_and_reports_minus_one_too(caplog):
    from modeling import DocumentIndex

    embeddings = np.eye(3, 4, dtype=np.float32)
    index = DocumentIndex.build([{"text": t} for t in "abc"], embeddings)
    with caplog.at_level("WARNING", logger="modeling.document_index"):
        assert [doc["text"] for doc in index.documents([1, -1])] == ["b"]
    assert "1 of 2 document ids are -1" in caplog.text


def test_the_documents_column_is_optional_with_a_corpus(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('"The digit is blue."\n"The digit is red."\n')
    path = write_csv(tmp_path, [GOOD_ROW, {**GOOD_ROW, "label": "0"}], columns=RETRIEVAL_COLUMNS[:-1])
    task = load_retrieval_task(path, tmp_path / "corpus.jsonl")
    assert [e.gold_document_ids for e in task.examples] == [[], []] and not task.has_gold_documents
    assert [doc["text"] for doc in task.corpus] == ["The digit is blue.", "The digit is red."]
    # An empty cell is a row without gold documents; other rows keep theirs.
    mixed = load_retrieval_task(write_csv(tmp_path, [GOOD_ROW, {**GOOD_ROW, "documents": ""}]),
                                tmp_path / "corpus.jsonl")
    assert mixed.examples[0].gold_document_ids and mixed.examples[1].gold_document_ids == []
    assert mixed.without_gold_documents().examples[0].gold_document_ids == []


def test_open_ended_answers_and_pictures_with_their_text(tmp_path):
    open_ended = {"question_text": "What does this creature eat?", "question_image": "q.png",
                  "answers": json.dumps(["berries", "berries", "berry"]),
                  "documents": json.dumps([{"image": "doc.png", "text": "The Kalomi eats berries."}, "A fact."])}
    path = write_csv(tmp_path, [open_ended], columns=["question_text", "question_image", "answers", "documents"])
    example, = load_retrieval_task(path).examples
    assert not example.is_multiple_choice and example.answer_choices is None
    assert example.reference_answers == ["berries", "berry"] and example.target_answer == "berries"
    corpus = load_retrieval_task(path).corpus
    assert corpus[0]["text"] == "The Kalomi eats berries." and corpus[0]["image"].size == (8, 8)
    # Both answer kinds in one row: the right choice is acceptable too, and is what the model is trained to say.
    both = write_csv(tmp_path, [{**GOOD_ROW, "answers": json.dumps(["navy", "blue"])}],
                     columns=[*RETRIEVAL_COLUMNS, "answers"])
    example, = load_retrieval_task(both).examples
    assert example.reference_answers == ["navy", "blue"] and example.target_answer == "blue"
    for bad, message in (("[]", "expected a JSON list of non-empty strings"), ('"berries"', "expected a JSON list"),
                         ("", "missing or empty")):
        path = write_csv(tmp_path, [{**open_ended, "answers": bad}],
                         columns=["question_text", "question_image", "answers", "documents"])
        with pytest.raises(InvalidInput, match=f"row 1, column 'answers': {message}"):
            load_retrieval_task(path)


def test_a_validation_split_holds_out_questions_and_an_open_corpus_adds_what_it_lacks(tmp_path):
    rows = [{**GOOD_ROW, "question_text": f"Question {i}?", "documents": json.dumps([f"Fact {i}."])} for i in range(10)]
    task = load_retrieval_task(write_csv(tmp_path, rows))
    rest, held_out = task.split(0.2, seed=0)
    assert len(rest.examples) == 8 and len(held_out.examples) == 2
    assert {e.question for e in rest.examples}.isdisjoint(e.question for e in held_out.examples)
    assert task.split(0.2, seed=0)[1].examples == held_out.examples  # the same questions every time
    with pytest.raises(InvalidInput, match="leaves no question"):
        task.split(0.01)

    saved = [{"text": "Fact 3.", "image": None}, {"text": "A distractor.", "image": None}]
    searched = held_out.searching(saved)
    assert [doc["text"] for doc in searched.corpus[:2]] == ["Fact 3.", "A distractor."]
    assert len(searched.corpus) == 2 + 10 - 1  # "Fact 3." is not added twice
    for example in searched.examples:
        gold, = example.gold_document_ids
        assert searched.corpus[gold]["text"] == f"Fact {example.question.split()[1][:-1]}."


def test_the_passages_variant_writes_each_catalogues_facts_as_passages_of_two_to_four_sentences(tmp_path):
    write_retrieval_vqa(tmp_path, n_train_catalogues=4, n_val_catalogues=1, n_test_catalogues=2, n_train_archive=5,
                        n_val_archive=2, n_test_archive=4, n_distractor_catalogues=1, n_distractor_drawings=2,
                        passages=True)
    task = load_retrieval_task(tmp_path / "train.csv", tmp_path / "corpus.jsonl")
    passages = [doc["text"] for doc in task.corpus if doc["text"]]
    assert all(2 <= passage.count(".") <= 4 for passage in passages)
    for example in task.examples:
        if example.question == ARCHIVE_QUESTION:
            continue
        passage = task.corpus[example.gold_document_ids[0]]["text"]
        assert contains_answer(passage, [example.answer_choices[example.label]])
        assert example.question.split()[2] in passage  # the catalogue's name
    # Some passages also name a wrong choice: the test of "holds the answer" must not ask for it alone.
    assert any(contains_answer(task.corpus[e.gold_document_ids[0]]["text"],
                               [c for i, c in enumerate(e.answer_choices) if i != e.label])
               for e in task.examples if e.question != ARCHIVE_QUESTION)


@pytest.fixture(scope="module")
def encyclopedia(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encyclopedia")
    sizes = write_encyclopedia(folder, n_train=40, n_val=10, n_test=20, n_distractors=10)
    return folder, sizes


def test_the_encyclopedia_asks_about_unseen_creatures_shown_in_another_view(encyclopedia):
    folder, sizes = encyclopedia
    assert sizes == {"train": 80, "val": 20, "test": 40, "corpus": 10}
    tasks = {split: load_retrieval_task(folder / f"{split}.csv") for split in ("train", "val", "test")}
    articles = {split: {task.corpus[i]["text"] for e in task.examples for i in e.gold_document_ids}
                for split, task in tasks.items()}
    assert not articles["train"] & articles["val"] and not articles["train"] & articles["test"]
    for task in tasks.values():
        for example in task.examples:
            document = task.corpus[example.gold_document_ids[0]]
            assert document["image"] is not None and document["text"]  # a picture with its article
            assert document["image"].size == example.image.size == (32, 32)
            assert np.abs(np.asarray(document["image"], float) - np.asarray(example.image, float)).mean() > 1
            assert contains_answer(document["text"], example.reference_answers)
            assert example.target_answer == example.answer_choices[example.label]
            assert len(example.answers) == 10


def test_encyclopedia_articles_name_wrong_candidates_and_answers_come_with_aliases(encyclopedia):
    folder, _ = encyclopedia
    task = load_retrieval_task(folder / "train.csv")
    wrong_named = [contains_answer(task.corpus[e.gold_document_ids[0]]["text"],
                                   [c for i, c in enumerate(e.answer_choices) if i != e.label])
                   for e in task.examples]
    assert 0.1 < np.mean(wrong_named) < 0.9
    assert any(len(e.reference_answers) > 1 for e in task.examples)
    labels = [e.label for e in task.examples]
    assert set(labels) == {0, 1, 2, 3} and max(np.bincount(labels)) < 0.45 * len(labels)
    answers_only = load_retrieval_task(folder / "train_answers_only.csv", folder / "train_documents.jsonl")
    assert not answers_only.has_gold_documents and len(answers_only.corpus) == 40 + 10
