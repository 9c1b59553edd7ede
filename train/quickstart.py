"""Quickstart: the whole SigPhi recipe on bundled data, from scratch, on a CPU, in a few minutes.

    python -m train.quickstart --output_dir outputs/quickstart      (what `make quickstart` runs)

1. write the digits VQA dataset (scikit-learn's `load_digits`, fixed train/test split);
2. build a tiny random SigPhi (timm SigLIP ViT of width 64 + Phi-3 of width 128);
3. give its towers stand-in "pretraining" (see `train.sigphi.standins`): real SigLIP/Phi-3 weights carry
   knowledge that tiny random parts lack, so this replaces downloading them — it is not part of the
   recipe a user with real checkpoints runs;
4. stage 1 (`train.align`): projector only, towers frozen;
5. stage 2 (`train.sft`): QLoRA — 4-bit NF4 decoder, LoRA on the language model, projector trained;
6. merge the adapter (`train.merge_lora`), evaluate exact-match accuracy on the test split
   (`train.evaluate`) and save `OUTPUT_DIR/sigphi/`;
7. retriever-generator on the bundled multiple-choice task (`train.make_dataset retrieval_vqa`): stand-in
   pretraining of its tiny parts, the retriever, a warm start of the generator on the top retrieved document, then
   both jointly on the top 5, choosing on the validation split (`train.train_retriever_generator --preset tiny`),
   save `OUTPUT_DIR/retriever_generator/`, then read the test split once: with the top 1, 3 and 5 retrieved
   documents (marginalised), no and gold documents, searching the training corpus plus the test documents;
8. write `OUTPUT_DIR/metrics.json`.
"""

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from train.align import AlignArguments
from train.align import main as align
from train.bundled_data.digits import DIGIT_QUESTION
from train.bundled_data.retrieval_vqa import write_retrieval_vqa
from train.common.cli import run_cli
from train.common.provenance import code_revision
from train.common.vqa_data import load_conversations
from train.make_dataset import MakeDatasetArguments
from train.make_dataset import main as make_dataset
from train.merge_lora import merge_lora
from train.retrieval.evaluation import evaluate_retriever_generator, searched_task
from train.retrieval.pipeline import TrainRetrieverGeneratorArguments, train_retriever_generator
from train.retrieval.task import load_retrieval_task
from train.sft import SFTArguments
from train.sft import main as sft
from train.sigphi.evaluation import evaluate_sigphi, format_table
from train.sigphi.loading import load_sigphi
from train.sigphi.sft_trainer import machine_defaults
from train.sigphi.standins import (context_answer_rows, linear_probe_accuracy, pretrain_language_model,
                                   pretrain_vision_tower)
from train.sigphi.tiny import build_tiny_sigphi

@dataclass
class QuickstartArguments:
    output_dir: str = field(default="outputs/quickstart", metadata={"help": "Where everything is written."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation and data order."})
    quantization: str = field(default="4bit", metadata={"help": "Stage-2 decoder weights.",
                                                        "choices": ["none", "4bit", "8bit"]})
    report_to: str = field(default="none", metadata={"help": "Trainer logging integration (e.g. tensorboard)."})
    image_token_reduction: int = field(default=1, metadata={
        "help": "SigPhi's pixel-shuffle factor r (r*r patches per image token), to compare r = 1 and 2."})
    skip_retriever_generator: bool = field(default=False, metadata={
        "help": "Run the SigPhi part only (e.g. when comparing SigPhi settings)."})


def stage_args(output_dir: str, seed: int, report_to: str, **overrides) -> SFTConfig:
    """Trainer settings shared by every quickstart stage: tiny model, CPU, short runs, checkpoints kept."""
    settings = {**machine_defaults(activation_checkpointing=False), "report_to": report_to, "seed": seed,
                "logging_steps": 25, "save_strategy": "no", "lr_scheduler_type": "cosine",
                "warmup_steps": 10, "dataloader_num_workers": 0, "disable_tqdm": False}
    return SFTConfig(output_dir=output_dir, **{**settings, **overrides})


@contextmanager
def timed(times: dict, name: str):
    start = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    yield
    times[name] = round(time.perf_counter() - start, 1)
    print(f"=== {name}: {times[name]} s ===", flush=True)


def run_sigphi(args: QuickstartArguments) -> dict:
    """Run steps 1–6 and return the SigPhi metrics (accuracy, test size, wall time of each stage)."""
    work = os.path.join(args.output_dir, "work")
    data_dir = os.path.join(args.output_dir, "data", "digits")
    times: dict[str, float] = {}
    common = {"seed": args.seed, "report_to": args.report_to}

    with timed(times, "data"):
        make_dataset(MakeDatasetArguments(dataset="digits", output_dir=data_dir))
        train, test = load_conversations(data_dir, "train"), load_conversations(data_dir, "test")
    with timed(times, "stand-in pretraining: vision tower"):
        model, processor = build_tiny_sigphi(seed=args.seed, image_token_reduction=args.image_token_reduction)
        pretrain_vision_tower(model, processor, train, stage_args(
            os.path.join(work, "vision-standin"), **common, num_train_epochs=30, per_device_train_batch_size=32,
            learning_rate=3e-3))
        probe_accuracy = linear_probe_accuracy(model, processor, train, test)
        print(f"stand-in tower, linear probe on the test split: {probe_accuracy:.3f}")
    with timed(times, "stand-in pretraining: language model"):
        answers = sorted({str(digit) for digit in range(10)})
        pretrain_language_model(model, processor, context_answer_rows(answers, DIGIT_QUESTION, 3000, args.seed),
                                stage_args(os.path.join(work, "lm-standin"), **common, num_train_epochs=1,
                                           per_device_train_batch_size=32, learning_rate=3e-3))
        base_dir = os.path.join(work, "sigphi-base")
        model.save_pretrained(base_dir)
        processor.save_pretrained(base_dir)
    with timed(times, "evaluate before stage 1 (untrained projector)"):
        before_stage_1 = evaluate_sigphi(model, processor, test)["accuracy"]
    aligned_dir = os.path.join(work, "sigphi-aligned")
    with timed(times, "stage 1: align projector"):
        align(AlignArguments(model_name_or_path=base_dir, dataset=data_dir),
              stage_args(aligned_dir, **common, num_train_epochs=4, per_device_train_batch_size=32,
                         learning_rate=3e-3))
    adapter_dir = os.path.join(work, "sigphi-sft")
    with timed(times, f"stage 2: {args.quantization} LoRA fine-tuning"):
        sft(SFTArguments(model_name_or_path=aligned_dir, dataset=data_dir, quantization=args.quantization),
            stage_args(adapter_dir, **common, num_train_epochs=6, per_device_train_batch_size=32,
                       learning_rate=2e-3))
    final_dir = os.path.join(args.output_dir, "sigphi")
    with timed(times, "merge LoRA"):
        merge_lora(adapter_dir, final_dir)
    with timed(times, "evaluate"):
        final_model, final_processor = load_sigphi(final_dir)
        result = evaluate_sigphi(final_model, final_processor, test)
    print(format_table(result["samples"], 10))
    return {"test_accuracy": result["accuracy"], "n_test": result["n"],
            "standin_tower_linear_probe_accuracy": probe_accuracy, "accuracy_before_stage_1": before_stage_1,
            "stage_seconds": times,
            "total_seconds": round(sum(times.values()), 1), "model_dir": final_dir}


def run_retriever_generator(args: QuickstartArguments) -> dict:
    """Step 7: the bundled retrieval task, trained (settings chosen on its validation split), then its test split read
    once, with no, gold, and the top 1, 3 and 5 retrieved documents (marginalised over the documents, each read in
    its own sequence), searching the training corpus plus the test questions' documents."""
    from modeling import RetrieverGeneratorForMultipleChoice
    from processing import RetrieverGeneratorProcessor

    data_dir = os.path.join(args.output_dir, "data", "retrieval_vqa")
    model_dir = os.path.join(args.output_dir, "retriever_generator")
    times: dict[str, float] = {}
    with timed(times, "retrieval data"):
        write_retrieval_vqa(data_dir)
    csvs = {split: os.path.join(data_dir, f"{split}.csv") for split in ("train", "val", "test")}
    with timed(times, "stand-ins, retriever, generator warm start, then both jointly on the top 5 documents"):
        trained = train_retriever_generator(TrainRetrieverGeneratorArguments(
            train_csv=csvs["train"], val_csv=csvs["val"], corpus=os.path.join(data_dir, "corpus.jsonl"),
            output_dir=model_dir, preset="tiny", seed=args.seed))
    with timed(times, "test: without / with gold / with the top 1, 3 and 5 retrieved documents"):
        model = RetrieverGeneratorForMultipleChoice.from_pretrained(model_dir).eval()
        processor = RetrieverGeneratorProcessor.from_pretrained(model_dir)
        task = searched_task(model, processor, load_retrieval_task(csvs["test"]), name="test")
        without, oracle = (evaluate_retriever_generator(model, processor, task, docs) for docs in ("none", "oracle"))
        top = {k: evaluate_retriever_generator(model, processor, task, "retrieved", n_docs=k) for k in (1, 3, 5)}
    return {"accuracy_top5_retrieved": top[5]["accuracy"], "accuracy_top3_retrieved": top[3]["accuracy"],
            "accuracy_top1_retrieved": top[1]["accuracy"], "accuracy_without_retrieval": without["accuracy"],
            "accuracy_with_oracle_documents": oracle["accuracy"], "chance_accuracy": 0.25,
            "n_docs": model.config.n_docs, "corpus": top[5]["corpus"],
            "retriever_recall_at_1": top[5]["retriever_recall_at_1"],
            "retriever_recall_at_5": top[5]["retriever_recall_at_5"], "retriever_mrr": top[5]["retriever_mrr"],
            "n_test": top[5]["n"], "validation": trained["validation"], "train_seconds": trained["seconds"],
            "stage_seconds": times, "total_seconds": round(sum(times.values()), 1), "model_dir": model_dir}


def main(args: QuickstartArguments) -> None:
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    metrics = {"code": code_revision(),
               "sigphi": {**run_sigphi(args), "image_token_reduction": args.image_token_reduction}}
    if not args.skip_retriever_generator:
        metrics["retriever_generator"] = run_retriever_generator(args)
    path = os.path.join(args.output_dir, "metrics.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    sigphi, rag = metrics["sigphi"], metrics.get("retriever_generator")
    print(f"\n| part | result | seconds |\n|---|---|---|\n"
          f"| SigPhi (r = {args.image_token_reduction}) | test accuracy {sigphi['test_accuracy']:.3f} on "
          f"{sigphi['n_test']} held-out digits (before stage 1: {sigphi['accuracy_before_stage_1']:.3f}; the "
          f"stand-in tower's linear probe: {sigphi['standin_tower_linear_probe_accuracy']:.3f}) "
          f"| {sigphi['total_seconds']} |")
    if rag is None:
        print(f"metrics: {path}")
        return
    print(f"| retriever-generator | accuracy {rag['accuracy_top1_retrieved']:.3f} with the top-1 retrieved "
          f"document, {rag['accuracy_top5_retrieved']:.3f} with the top 5 (marginalised), "
          f"{rag['accuracy_without_retrieval']:.3f} without (chance 0.25), "
          f"{rag['accuracy_with_oracle_documents']:.3f} with the gold ones; retriever recall@1 "
          f"{rag['retriever_recall_at_1']:.3f}, recall@5 {rag['retriever_recall_at_5']:.3f} on {rag['n_test']} "
          f"questions about unseen facts "
          f"| {rag['total_seconds']} |\nmetrics: {path}")


if __name__ == "__main__":
    run_cli(main, QuickstartArguments)
