"""The teacher of `train.generate_dataset`, behind one call: `teacher.answer(images, questions) -> answers`.

Two engines answer the same way (the teacher's own chat template, one image before the question, only the new
tokens decoded, greedy unless a temperature is given):
- `transformers`: `generate` on left-padded batches in this process (the default; needs nothing more);
- `vllm`: vLLM's offline engine, which schedules and packs the requests of a batch itself (continuous batching,
  paged KV cache); the engine of choice on a GPU. vLLM runs SmolVLM2, the default teacher, natively.
Which rows are pending, and writing them so that a killed run resumes, stays in `train.generate_dataset`.
"""

from pathlib import Path

import torch
from PIL import Image

from train.common.cli import InvalidInput
from train.common.vqa_data import conversation


def resolved_device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    """`auto` means cuda when there is one, and bfloat16 there, float32 on a CPU."""
    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return device, dtype if dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")


def teacher_load_error(teacher: str, error: Exception) -> InvalidInput:
    where = "" if Path(teacher).is_dir() else "no such folder, and as a Hub id: "
    return InvalidInput(f"--teacher {teacher}: {where}{str(error).splitlines()[0]}")


class TransformersTeacher:
    """`AutoModelForImageTextToText` + `AutoProcessor`, left padding so batched prompts end where answers start."""

    def __init__(self, teacher: str, device: str, dtype: str, trust_remote_code: bool, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device, dtype = resolved_device_and_dtype(device, dtype)
        try:
            processor = AutoProcessor.from_pretrained(teacher, trust_remote_code=trust_remote_code)
            model = AutoModelForImageTextToText.from_pretrained(teacher, dtype=getattr(torch, dtype),
                                                                trust_remote_code=trust_remote_code)
        except (OSError, ValueError, ImportError) as error:  # ImportError: e.g. SmolVLM's processor needs num2words
            raise teacher_load_error(teacher, error) from None
        processor.tokenizer.padding_side = "left"
        if processor.tokenizer.pad_token is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        self.model, self.processor = model.to(device).eval(), processor
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        self.generate_kwargs = {"max_new_tokens": max_new_tokens, **sampling}
        torch.manual_seed(seed)

    @torch.inference_mode()
    def answer(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        processor = self.processor
        prompts = [processor.apply_chat_template(conversation(q), add_generation_prompt=True) for q in questions]
        inputs = processor(text=prompts, images=[[image.convert("RGB")] for image in images], padding=True,
                           return_tensors="pt").to(self.model.device, dtype=self.model.dtype)
        output = self.model.generate(**inputs, **self.generate_kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return [answer.strip() for answer in processor.batch_decode(new_tokens, skip_special_tokens=True)]


class VLLMTeacher:
    """vLLM's `LLM.chat` over a whole batch at once; the chat template is the teacher folder's own."""

    def __init__(self, teacher: str, device: str, dtype: str, trust_remote_code: bool, max_new_tokens: int,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, memory_fraction: float = 0.9):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise InvalidInput("--backend vllm: vLLM is not installed (pip install vllm; on a CPU see "
                               "docs/using_and_sharing.md, 'Serve with vLLM')") from None
        _, dtype = resolved_device_and_dtype(device, dtype)
        try:
            self.llm = LLM(model=teacher, trust_remote_code=trust_remote_code, dtype=dtype, seed=seed,
                           limit_mm_per_prompt={"image": 1}, gpu_memory_utilization=memory_fraction)
        except (OSError, ValueError) as error:
            raise teacher_load_error(teacher, error) from None
        self.sampling = SamplingParams(max_tokens=max_new_tokens, temperature=temperature,
                                       top_p=top_p if temperature > 0 else 1.0, seed=seed)

    def answer(self, images: list[Image.Image], questions: list[str]) -> list[str]:
        conversations = [[{"role": "user", "content": [{"type": "image_pil", "image_pil": image.convert("RGB")},
                                                       {"type": "text", "text": question}]}]
                         for image, question in zip(images, questions)]
        outputs = self.llm.chat(conversations, self.sampling, use_tqdm=False)
        # Decoded from the token ids as transformers does: vLLM's incremental text holds back a last character
        # whose UTF-8 bytes are incomplete, where `decode` writes U+FFFD, so the two engines' rows could differ.
        tokenizer = self.llm.get_tokenizer()
        return [tokenizer.decode(output.outputs[0].token_ids, skip_special_tokens=True).strip() for output in outputs]


TEACHER_BACKENDS = {"transformers": TransformersTeacher, "vllm": VLLMTeacher}
