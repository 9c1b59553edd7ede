"""Greedy answers from vLLM's offline engine, all questions in one batched `LLM.chat` call.

Runs inside the serve venv (vLLM's CPU build), not this project's: it reads only a saved folder and a JSON
list of {"image": PNG path, "question": text}, and writes {"answers", "load_seconds", "answer_seconds"}. Items
that also carry "scored_prompts" (full prompt texts, e.g. the chat prompt followed by one answer choice) get, in
"prompt_logprobs", each prompt's token ids and the log-probability vLLM gives every token after the first
(`SamplingParams(prompt_logprobs=0)`), the quantity a choice-scoring generator sums.

    python vllm_offline.py FOLDER QUESTIONS.json OUTPUT.json [--dtype float32] [--max_num_seqs N]
"""

import argparse
import json
import time

from PIL import Image


def chat_messages(image_path: str, question: str) -> list[dict]:
    """The same user turn as the project's `conversation()`: one image, then the question."""
    image = Image.open(image_path).convert("RGB")
    return [{"role": "user", "content": [{"type": "image_pil", "image_pil": image},
                                         {"type": "text", "text": question}]}]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("questions")
    parser.add_argument("output")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--memory_fraction", type=float, default=0.2,
                        help="Share of the machine's RAM vLLM reserves (its --gpu-memory-utilization on a CPU).")
    parser.add_argument("--max_num_seqs", type=int, default=None, help="vLLM's default scheduler when not given.")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams  # after argparse: importing vLLM takes seconds

    items = json.loads(open(args.questions, encoding="utf-8").read())
    start = time.perf_counter()
    engine_settings = {"max_num_seqs": args.max_num_seqs} if args.max_num_seqs else {}
    llm = LLM(model=args.folder, model_impl="transformers", trust_remote_code=True, dtype=args.dtype,
              enforce_eager=True, limit_mm_per_prompt={"image": 1}, seed=0,
              gpu_memory_utilization=args.memory_fraction, **engine_settings)
    loaded = time.perf_counter()
    conversations = [chat_messages(item["image"], item["question"]) for item in items]
    outputs = llm.chat(conversations, SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens),
                       use_tqdm=True)
    answered = time.perf_counter()
    result = {"answers": [output.outputs[0].text.strip() for output in outputs],
              "load_seconds": round(loaded - start, 2), "answer_seconds": round(answered - loaded, 3)}
    scored = [{"prompt": prompt, "multi_modal_data": {"image": Image.open(item["image"]).convert("RGB")}}
              for item in items for prompt in item.get("scored_prompts", [])]
    if scored:
        outputs = llm.generate(scored, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        result["prompt_logprobs"] = [
            {"token_ids": list(output.prompt_token_ids),
             "logprobs": [None if step is None else step[token].logprob
                          for token, step in zip(output.prompt_token_ids, output.prompt_logprobs)]}
            for output in outputs]
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":  # vLLM starts its engine process with spawn, which re-imports this file
    main()
