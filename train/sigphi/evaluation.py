"""Exact-match accuracy of a SigPhi model on conversational VQA rows, and a table of sample answers.

Each question goes through the model's own chat template and `generate` (greedy, batched with left
padding), as a user would ask it. Answers are compared after normalisation (case, surrounding space and
final punctuation), which is what "exact match" means for short answers.
"""

import string

import torch
from tqdm.auto import tqdm

from train.common.vqa_data import conversation, row_question_answer


def normalise(answer: str) -> str:
    return answer.strip().strip(string.punctuation + " ").lower()


@torch.no_grad()
def evaluate_sigphi(model, processor, dataset, batch_size: int = 32, max_new_tokens: int = 16) -> dict:
    """{'accuracy', 'n', 'samples': [(question, expected, answer)]} for conversational rows."""
    model.eval()
    processor.tokenizer.padding_side = "left"
    samples, correct = [], 0
    for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating", unit="batch"):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        pairs = [row_question_answer(row) for row in rows]
        prompts = [processor.apply_chat_template(conversation(question), add_generation_prompt=True)
                   for question, _ in pairs]
        inputs = processor(text=prompts, images=[row["images"] for row in rows], return_tensors="pt",
                           padding=True).to(model.device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for (question, expected), answer in zip(pairs, answers):
            correct += normalise(answer) == normalise(expected)
            samples.append((question, expected, answer.strip()))
    return {"accuracy": correct / max(len(samples), 1), "n": len(samples), "samples": samples}


def format_table(samples: list[tuple[str, str, str]], limit: int) -> str:
    lines = ["| question | expected | answer | ok |", "|---|---|---|---|"]
    for question, expected, answer in samples[:limit]:
        ok = "✓" if normalise(answer) == normalise(expected) else "✗"
        lines.append(f"| {question} | {expected} | {answer} | {ok} |")
    return "\n".join(lines)
