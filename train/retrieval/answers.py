"""Answers as VQA evaluations read them: normalised text, whole-word matching in documents, VQA accuracy and exact
match.

Normalisation follows the VQA evaluation script's steps (`vqaEval.py`: lower case, punctuation, number words to
digits, articles dropped) in a compact form, so that "Two", "2" and "two." are one answer and "the berries" is
"berries". Matching is on whole normalised words: "red" is found in "a red door" but not in "covered".
"""

import re
import unicodedata
from collections import Counter

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
VQA_AGREEMENT = 3  # reference answers that must agree with a prediction for full VQA accuracy
# Punctuation becomes a word break, except a decimal point between digits ("2.5") and an apostrophe inside a word,
# which is dropped ("creature's" -> "creatures", as the VQA script's contraction table would merge it).
_INNER_APOSTROPHE = re.compile(r"(?<=\w)['’](?=\w)")
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalize_answer(text: str) -> str:
    """Lower case, Unicode-compatibility folded, punctuation to spaces, number words to digits, articles dropped,
    single spaces: the form answers are compared in."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCTUATION.sub(" ", _INNER_APOSTROPHE.sub("", text))
    return " ".join(NUMBER_WORDS.get(word, word) for word in text.split() if word not in ARTICLES)


def contains_answer(text: str, answers: list[str]) -> bool:
    """Whether any of `answers` occurs in `text` as whole normalised words (RA-VQA's "the passage holds the answer"),
    whatever else the text names."""
    padded = f" {normalize_answer(text)} "
    return any(f" {answer} " in padded for answer in map(normalize_answer, answers) if answer)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy: min(number of reference answers equal to the prediction / 3, 1), compared normalised."""
    predicted = normalize_answer(prediction)
    return min(sum(normalize_answer(answer) == predicted for answer in answers) / VQA_AGREEMENT, 1.0)


def exact_match(prediction: str, answers: list[str]) -> bool:
    """Whether the prediction equals one of the reference answers, compared normalised."""
    return normalize_answer(prediction) in {normalize_answer(answer) for answer in answers}


def most_common_answer(answers: list[str]) -> str:
    """The reference answer given most often (normalised forms counted; ties go to the first given), in the form it
    was first written: the one a model is trained to say."""
    counts = Counter(normalize_answer(answer) for answer in answers)
    best = max(counts.values())
    return next(answer for answer in answers if counts[normalize_answer(answer)] == best)
