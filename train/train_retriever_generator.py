"""Train a retriever-generator for multiple-choice VQA from seed CSVs: the retriever first, then the generator on
the documents that retriever returns.

    python -m train.train_retriever_generator --train_csv data/retrieval/train.csv \\
        --eval_csv data/retrieval/test.csv --corpus data/retrieval/corpus.jsonl --preset tiny --output_dir O

`--preset tiny` builds both models from scratch (a 2-layer SigLIP-style text tower and a small timm ResNet for
the retriever, the tiny SigPhi as generator) and trains every weight: random weights have nothing for LoRA to
adapt. Without it, real pretrained parts are fine-tuned: a retriever from SigLIP (or `--retriever_model`) and the
`--generator_model`, with LoRA adapters (QLoRA with `--load_in_4bit`). Writes `O/retriever`, `O/generator`, the
composite `O` (with the processors) and prints the evaluation on `--eval_csv` as JSON.
"""

import json
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import (AutoProcessor, AutoTokenizer, BitsAndBytesConfig, PreTrainedConfig, PreTrainedModel,
                          ProcessorMixin, SiglipTextConfig)

from configuration import MultimodalRetrieverConfig, RetrieverGeneratorConfig
from modeling import MultimodalRetrieverModel, RetrieverGeneratorForMultipleChoice
from modeling.modeling_retriever_generator import generator_class
from processing import MultimodalRetrieverProcessor, RetrieverGeneratorProcessor
from train.build_model import build_tiny_sigphi
from train.cli import InvalidInput, run_cli
from train.evaluate_retriever_generator import evaluate_model
from train.generator_training import generator_rows, lora_config, train_generator
from train.retrieval_data import RetrievalTask, load_retrieval_task
from train.retriever_training import rank_documents, train_retriever
from train.tokenizer import build_byte_level_tokenizer

TINY_RETRIEVER_IMAGE_MODEL = "resnet18"
# GroupNorm with one group (a LayerNorm over channels and pixels): unlike BatchNorm it normalises each image by
# itself, so query and document images trained in one batch never share a statistic.
TINY_RETRIEVER_IMAGE_KWARGS = {"layers": [1, 1, 1, 1], "channels": [32, 64, 64, 128], "stem_width": 16,
                               "norm_layer": "groupnorm1"}
TINY_RETRIEVER_TEXT_KWARGS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "max_position_embeddings": 64}
SIGPHI_LORA_TARGETS = r".*language_model.*\.(qkv_proj|o_proj|gate_up_proj|down_proj)"


@dataclass
class TrainRetrieverGeneratorArguments:
    train_csv: str = field(metadata={"help": "Seed CSV of training questions (their documents join the corpus)."})
    eval_csv: str = field(metadata={"help": "Seed CSV to evaluate on after training."})
    output_dir: str = field(metadata={"help": "Folder to write O/retriever, O/generator and the composite O to."})
    corpus: str | None = field(default=None, metadata={"help": "JSONL of extra (distractor) documents."})
    preset: str | None = field(default=None, metadata={"help": "'tiny': both models from scratch, CPU-sized.",
                                                        "choices": ["tiny"]})
    retriever_model: str | None = field(default=None, metadata={
        "help": "Saved MultimodalRetriever to fine-tune (default: one built from the two SigLIP parts below)."})
    retriever_image_model: str = field(default="vit_so400m_patch14_siglip_384.webli", metadata={
        "help": "timm SigLIP image tower of a new retriever."})
    retriever_text_model: str = field(default="google/siglip-so400m-patch14-384", metadata={
        "help": "SigLIP checkpoint whose text tower a new retriever uses."})
    generator_model: str | None = field(default=None, metadata={
        "help": "Image-text-to-text model to fine-tune, e.g. a SigPhi folder or "
                "meta-llama/Llama-3.2-11B-Vision-Instruct."})
    n_docs: int = field(default=1, metadata={"help": "Retrieved documents the generator reads."})
    retriever_epochs: float = field(default=16, metadata={"help": "Retriever training epochs."})
    retriever_learning_rate: float = field(default=3e-3, metadata={"help": "Retriever learning rate."})
    hard_negatives: int = field(default=8, metadata={"help": "Mined hard negatives per question."})
    loss_type: str = field(default="infonce", metadata={"help": "Retriever ranking loss.",
                                                         "choices": ["infonce", "sigmoid"]})
    generator_epochs: float = field(default=2, metadata={"help": "Generator training epochs."})
    generator_learning_rate: float = field(default=1e-3, metadata={"help": "Generator learning rate."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank for pretrained generators (0: train every weight)."})
    lora_target_modules: str = field(default=SIGPHI_LORA_TARGETS, metadata={
        "help": "Regex (or 'all-linear') of the generator modules LoRA adapts; the default fits SigPhi."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the pretrained generator in 4-bit."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and data order."})


def build_tiny_retriever(task: RetrievalTask, seed: int = 0, loss_type: str = "infonce"
                         ) -> tuple[MultimodalRetrieverModel, MultimodalRetrieverProcessor]:
    """A from-scratch retriever (≈0.5 M parameters) with a byte-level tokenizer trained on the task's texts."""
    texts = [example.question for example in task.examples] + [doc["text"] for doc in task.corpus if doc["text"]]
    tokenizer = build_byte_level_tokenizer(texts, image_token=None)
    torch.manual_seed(seed)
    config = MultimodalRetrieverConfig(
        text_config=SiglipTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                     bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                                     **TINY_RETRIEVER_TEXT_KWARGS),
        image_model_name=TINY_RETRIEVER_IMAGE_MODEL, image_model_kwargs=TINY_RETRIEVER_IMAGE_KWARGS, image_size=16,
        projection_dim=64, text_pooling="mean", loss_type=loss_type)
    return MultimodalRetrieverModel(config), MultimodalRetrieverProcessor.from_retriever_config(tokenizer, config)


def build_siglip_retriever(image_model: str, text_model: str
                           ) -> tuple[MultimodalRetrieverModel, MultimodalRetrieverProcessor]:
    """A retriever of pretrained SigLIP towers and its processor (texts padded to SigLIP's 64 tokens)."""
    retriever = MultimodalRetrieverModel.from_pretrained_components(image_model, text_model)
    processor = MultimodalRetrieverProcessor.from_retriever_config(
        AutoTokenizer.from_pretrained(text_model), retriever.config,
        max_length=retriever.config.text_config.max_position_embeddings, pad_to_max_length=True)
    return retriever, processor


def load_generator(name_or_path: str, load_in_4bit: bool = False) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A pretrained generator in its saved dtype and its processor, 4-bit quantized for QLoRA if asked."""
    model_type = PreTrainedConfig.get_config_dict(name_or_path)[0]["model_type"]
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4") if load_in_4bit else None
    model = generator_class(model_type).from_pretrained(name_or_path, dtype="auto", quantization_config=quantization)
    return model, AutoProcessor.from_pretrained(name_or_path)


def build_models(args: TrainRetrieverGeneratorArguments, train_task: RetrievalTask):
    """(retriever, retriever processor, generator, generator processor, LoRA config or None) for `args`."""
    if args.preset == "tiny":
        retriever, retriever_processor = build_tiny_retriever(train_task, args.seed, args.loss_type)
        generator, generator_processor = build_tiny_sigphi(args.seed)
        return retriever, retriever_processor, generator, generator_processor, None
    if not args.generator_model:
        raise InvalidInput("give --preset tiny, or --generator_model (and --retriever_model or the SigLIP parts)")
    if args.retriever_model:
        retriever = MultimodalRetrieverModel.from_pretrained(args.retriever_model)
        retriever_processor = AutoProcessor.from_pretrained(args.retriever_model)
    else:
        retriever, retriever_processor = build_siglip_retriever(args.retriever_image_model,
                                                                args.retriever_text_model)
    retriever.config.loss_type = args.loss_type
    generator, generator_processor = load_generator(args.generator_model, args.load_in_4bit)
    peft = lora_config(args.lora_target_modules, args.lora_r) if args.lora_r else None
    return retriever, retriever_processor, generator, generator_processor, peft


def train_retriever_generator(args: TrainRetrieverGeneratorArguments) -> dict:
    """Train, save to `args.output_dir` and return the evaluation on `args.eval_csv` (with timings)."""
    train_task = load_retrieval_task(args.train_csv, args.corpus)
    eval_task = load_retrieval_task(args.eval_csv, args.corpus)
    retriever, retriever_processor, generator, generator_processor, peft = build_models(args, train_task)

    start = time.time()
    train_retriever(retriever, retriever_processor, train_task, args.output_dir, epochs=args.retriever_epochs,
                    learning_rate=args.retriever_learning_rate, n_negatives=args.hard_negatives, seed=args.seed)
    retriever_seconds = time.time() - start

    config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config,
                                                                       n_docs=args.n_docs)
    retrieved = rank_documents(retriever, retriever_processor, train_task, args.n_docs)  # indexes the train corpus
    generator = train_generator(generator, generator_processor,
                                generator_rows(train_task, retrieved, config.document_template), args.output_dir,
                                epochs=args.generator_epochs, learning_rate=args.generator_learning_rate,
                                peft_config=peft, gradient_checkpointing=args.preset != "tiny", seed=args.seed)
    generator_seconds = time.time() - start - retriever_seconds

    model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator)
    processor = RetrieverGeneratorProcessor(retriever_processor, generator_processor)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    metrics = evaluate_model(model, processor, eval_task, docs="retrieved")
    return {**metrics, "retriever_train_seconds": round(retriever_seconds, 1),
            "generator_train_seconds": round(generator_seconds, 1), "arguments": asdict(args)}


def main(args: TrainRetrieverGeneratorArguments) -> None:
    print(json.dumps(train_retriever_generator(args), indent=2))


if __name__ == "__main__":
    run_cli(main, TrainRetrieverGeneratorArguments)
