"""Answers as VQA evaluations read them: normalisation, whole-word matching in a document, VQA accuracy, exact
match, and which reference answer a model is trained to say."""

import pytest

from train.retrieval.answers import contains_answer, exact_match, most_common_answer, normalize_answer, vqa_accuracy


@pytest.mark.parametrize("raw, normalised", [
    ("Red", "red"),
    ("  The  Berries. ", "berries"),
    ("a red door!", "red door"),
    ("Two", "2"), ("two", "2"), ("2", "2"), ("none", "0"),
    ("2.5 kg", "2.5 kg"),
    ("end. 5", "end 5"),
    ("creature's eggs", "creatures eggs"),
    ("t-shirt", "t shirt"),
    ("ＲＥＤ", "red"),  # full-width letters fold to ASCII
])
def test_answers_are_compared_lower_case_without_punctuation_articles_or_number_words(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_a_document_holds_an_answer_as_whole_words_whatever_else_it_names():
    assert contains_answer("In the Kalomi catalogue, the digit seven is red. The digit two is blue.", ["blue"])
    assert contains_answer("The Kalomi lives in caves, its rival in trees.", ["cave", "caves"])
    assert contains_answer("It has 4 legs.", ["four"]) and contains_answer("It has four legs.", ["4"])
    assert contains_answer("It lives in the salt marshes.", ["salt marshes"])
    assert not contains_answer("The floor is covered in dust.", ["red"])  # "red" inside "covered"
    assert not contains_answer("Blueberries grow here.", ["blue"])
    assert not contains_answer("It lives in salt flats.", ["salt marshes"])
    assert not contains_answer("Anything at all.", [])


def test_vqa_accuracy_counts_matching_reference_answers_up_to_three():
    references = ["berries"] * 4 + ["berry"] * 3 + ["fruit"] * 2 + ["seeds"]
    assert vqa_accuracy("Berries.", references) == 1.0
    assert vqa_accuracy("berry", references) == 1.0
    assert vqa_accuracy("fruit", references) == pytest.approx(2 / 3)
    assert vqa_accuracy("seeds", references) == pytest.approx(1 / 3)
    assert vqa_accuracy("fish", references) == 0.0


def test_exact_match_is_equality_with_any_reference_answer_after_normalisation():
    assert exact_match("The caves", ["caves", "cave"]) and exact_match("4", ["four"])
    assert not exact_match("caves and trees", ["caves"])


def test_a_model_is_trained_to_say_the_answer_given_most_often():
    assert most_common_answer(["berry", "Berries", "berries", "fruit"]) == "Berries"  # counted normalised
    assert most_common_answer(["gray", "grey"]) == "gray"  # a tie goes to the first given
