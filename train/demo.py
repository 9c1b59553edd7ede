"""A Gradio demo: upload an image, ask a question, read the model's answer.

    pip install -e ".[demo]"
    python -m train.demo --model outputs/quickstart/sigphi                  # then open http://127.0.0.1:7860
    python -m train.demo --model outputs/quickstart/retriever_generator     # also lists the retrieved documents

A SigPhi folder answers through its chat template and `generate`, exactly as `train.evaluate` asks. A
retriever-generator folder first retrieves `--n_docs` documents for the image and question, shows them with their
scores, and answers from them. The server listens on 127.0.0.1 unless `--host` says otherwise.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedConfig

from train.common.cli import InvalidInput, run_cli
from train.common.vqa_data import conversation

# (image, question) -> (answer, [[score, document], ...]); the document list is empty for models that do not retrieve.
Answerer = Callable[[Image.Image, str], tuple[str, list[list]]]


@dataclass
class DemoArguments:
    model: str = field(metadata={"help": "SigPhi or retriever-generator folder (or Hub id)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to listen on."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest answer generated."})
    n_docs: int = field(default=3, metadata={"help": "Documents a retriever-generator retrieves and reads."})


def model_type(path: str) -> str:
    try:
        return PreTrainedConfig.get_config_dict(path)[0]["model_type"]
    except (OSError, KeyError) as error:
        raise InvalidInput(f"{path}: not a model folder or reachable Hub repo ({error})") from None


def sigphi_answerer(path: str, max_new_tokens: int) -> Answerer:
    from train.sigphi.loading import load_sigphi

    model, processor = load_sigphi(path)
    model.eval()

    @torch.no_grad()
    def answer(image: Image.Image, question: str) -> tuple[str, list[list]]:
        prompt = processor.apply_chat_template(conversation(question), add_generation_prompt=True)
        inputs = processor(text=[prompt], images=[[image]], return_tensors="pt").to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip(), []

    return answer


def retriever_generator_answerer(path: str, max_new_tokens: int, n_docs: int) -> Answerer:
    from modeling import RetrieverGeneratorForMultipleChoice
    from processing import RetrieverGeneratorProcessor

    model = RetrieverGeneratorForMultipleChoice.from_pretrained(path).eval()
    processor = RetrieverGeneratorProcessor.from_pretrained(path)

    def answer(image: Image.Image, question: str) -> tuple[str, list[list]]:
        scores, _, documents = model.retrieve(processor, [question], [image], n_docs)
        text = model.generate(processor, question, image, documents=documents[0], max_new_tokens=max_new_tokens,
                              do_sample=False)
        rows = [[round(score, 4), document["text"] if document["text"] is not None else "(an image document)"]
                for score, document in zip(scores[0].tolist(), documents[0])]
        return text.strip(), rows

    return answer


def load_answerer(path: str, max_new_tokens: int = 32, n_docs: int = 3) -> tuple[Answerer, bool]:
    """The answer function for the model at `path`, and whether it retrieves documents."""
    if model_type(path) == "retriever_generator":
        return retriever_generator_answerer(path, max_new_tokens, n_docs), True
    return sigphi_answerer(path, max_new_tokens), False


def build_demo(answer: Answerer, retrieves: bool, title: str):
    """The page: image upload, question box, Ask button, answer box and (for retrievers) the documents read."""
    import gradio as gr

    def ask(image, question):
        if image is None:
            raise gr.Error("Upload an image first.")
        if not question or not question.strip():
            raise gr.Error("Type a question about the image.")
        try:
            return answer(image, question.strip())
        except ValueError as error:  # e.g. a question longer than the model's context
            raise gr.Error(str(error)) from None

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nUpload an image and ask a question about it.")
        with gr.Row():
            image = gr.Image(type="pil", label="Image", height=320, elem_id="image")
            with gr.Column():
                question = gr.Textbox(label="Question", placeholder="What digit is shown in this image?",
                                      elem_id="question")
                button = gr.Button("Ask", variant="primary", elem_id="ask")
                reply = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
        documents = gr.Dataframe(headers=["score", "document"], label="Retrieved documents", visible=retrieves,
                                 elem_id="documents")
        for event in (button.click, question.submit):
            event(ask, [image, question], [reply, documents])
    return demo


def main(args: DemoArguments) -> None:
    answer, retrieves = load_answerer(args.model, args.max_new_tokens, args.n_docs)
    title = f"Ask {Path(args.model).name or args.model}"
    build_demo(answer, retrieves, title).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    run_cli(main, DemoArguments)
