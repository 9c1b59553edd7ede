"""Training a retriever-generator: the recipe's stages in order, model selection on a validation split, saving, and
one evaluation of the test split at the end if asked (`python -m train.train_retriever_generator` runs this; the
quickstart calls `train_retriever_generator` directly).

0. (tiny preset only) stand-in pretraining of the from-scratch parts (`standins`, `image_tower_standin`);
1. retriever (`retriever_stage`): InfoNCE with mined hard negatives on the gold documents, or, answers only, on
   pseudo-relevant ones (`pseudo_relevance`: the text test, and the generator judging pictures without text), then once
   more on the pseudo-relevant document the trained retriever ranks highest (hard EM);
2. generator warm start (`generator_stage`): SFT on the top retrieved document;
3. joint (`joint_stage`), epoch by epoch: pseudo-labels recomputed with the generator's judgement (answers only), the
   top `n_docs` documents read with the marginal likelihood; the validation split picks the best epoch (or none).
"""

import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from configuration import RetrieverGeneratorConfig
from modeling import RetrieverGeneratorForMultipleChoice
from processing import RetrieverGeneratorProcessor
from train.common.cli import InvalidInput
from train.retrieval.evaluation import evaluate_retriever_generator, searched_task
from train.retrieval.generator_stage import generator_lora_config, warm_start_generator
from train.retrieval.image_tower_standin import warm_up_image_tower_on_validation
from train.retrieval.joint_stage import train_joint_epoch
from train.retrieval.models import build_tiny_retriever, load_generator, load_retriever
from train.retrieval.pseudo_relevance import pseudo_relevance_labels
from train.retrieval.ranking import rank_documents
from train.retrieval.retriever_stage import train_retriever
from train.retrieval.standins import standin_generator
from train.retrieval.task import RetrievalTask, load_retrieval_task
from train.sigphi.qlora import LANGUAGE_MODEL_LORA_TARGETS

DEFAULT_RETRIEVER = "google/siglip-so400m-patch14-384"


@dataclass
class TrainRetrieverGeneratorArguments:
    train_csv: str = field(metadata={"help": "Seed CSV of training questions (their documents join the corpus)."})
    output_dir: str = field(metadata={"help": "Folder to write O/retriever, O/generator and the composite O to."})
    val_csv: str | None = field(default=None, metadata={
        "help": "Seed CSV of validation questions: every choice made during training is made on it (default: "
                "--val_fraction of the training questions)."})
    val_fraction: float = field(default=0.1, metadata={
        "help": "Share of the training questions held out for validation when there is no --val_csv."})
    eval_csv: str | None = field(default=None, metadata={
        "help": "Seed CSV of test questions, evaluated once after training (as python -m "
                "train.evaluate_retriever_generator does: the saved corpus plus their documents)."})
    corpus: str | None = field(default=None, metadata={"help": "JSONL of further documents for the corpus."})
    preset: str | None = field(default=None, metadata={
        "help": "'tiny': both models from scratch, CPU-sized, with stand-in pretraining.", "choices": ["tiny"]})
    retriever_model: str = field(default=DEFAULT_RETRIEVER, metadata={
        "help": "A saved MultimodalRetriever, or a published dual encoder (SiglipModel, Siglip2Model, CLIPModel) as "
                "it is (ignored with --preset tiny)."})
    generator_model: str | None = field(default=None, metadata={
        "help": "Image-text-to-text model to fine-tune, e.g. a SigPhi folder or "
                "meta-llama/Llama-3.2-11B-Vision-Instruct."})
    n_docs: int = field(default=5, metadata={"help": "Retrieved documents the generator reads, marginalised."})
    gold_documents: bool = field(default=True, metadata={
        "help": "Train the retriever on the CSV's gold documents when it has them (--no_gold_documents: learn from "
                "the answers alone, as without the column)."})
    image_warm_up_epochs: int = field(default=60, metadata={
        "help": "Tiny preset: epochs of the image tower's stand-in pretraining on the task's pictures (0: none), with "
                "each kind of views; the one under which validation pictures find their gold documents' is kept."})
    reader_epochs: float = field(default=10, metadata={
        "help": "Tiny preset: epochs of the generator's reading stand-in (passages, colours, digits; 0: none). The "
                "stand-in generator is kept on disk (SIGPHI_STANDIN_CACHE) and reused, as a download would be."})
    reader_vision_epochs: int = field(default=30, metadata={
        "help": "Tiny preset: epochs of the generator's vision tower stand-in (telling the digits apart; 0: none)."})
    pseudo_relevance_depth: int = field(default=10, metadata={
        "help": "Answers only: candidates per question from each neighbourhood, checked for pseudo-relevance."})
    pseudo_relevance_margin: float = field(default=0.0, metadata={
        "help": "Answers only: how many nats a document must raise the generator's log-probability of the answer by "
                "to count."})
    picture_copies: bool = field(default=False, metadata={
        "help": "Answers only: a picture that is a copy of the question's own (mutual nearest neighbours) is its "
                "only relevant picture (for corpora of copies)."})
    nearest_picture_only: bool = field(default=True, metadata={
        "help": "Answers only: of the pseudo-relevant pictures without text, only the one the image tower ranks "
                "nearest the question's counts (DPR's distant supervision with the picture's likeness as the prior)."})
    hard_em_epochs: float = field(default=8, metadata={
        "help": "Answers only: epochs of a second retriever round on each question's pseudo-relevant document that "
                "the first round's retriever ranks highest (0: none)."})
    retriever_epochs: float = field(default=32, metadata={"help": "Retriever training epochs."})
    retriever_learning_rate: float = field(default=3e-3, metadata={"help": "Retriever learning rate."})
    hard_negatives: int = field(default=8, metadata={"help": "Mined hard negatives per question."})
    loss_type: str = field(default="infonce", metadata={"help": "Retriever ranking loss.",
                                                         "choices": ["infonce", "sigmoid"]})
    generator_epochs: float = field(default=6, metadata={
        "help": "Generator warm-start epochs (6: chosen against 2 on both bundled tasks' validation splits)."})
    generator_learning_rate: float = field(default=1e-3, metadata={"help": "Generator learning rate."})
    joint_epochs: float = field(default=1, metadata={"help": "Epochs of joint training on the top n_docs documents."})
    joint_batch_size: int = field(default=8, metadata={"help": "Questions per joint training step."})
    joint_generator_learning_rate: float = field(default=5e-4, metadata={"help": "Generator learning rate, joint."})
    joint_retriever_learning_rate: float = field(default=2e-4, metadata={"help": "Retriever learning rate, joint."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank for pretrained generators (0: train every weight)."})
    lora_target_modules: str = field(default=LANGUAGE_MODEL_LORA_TARGETS, metadata={
        "help": "Regex (or 'all-linear') of the generator modules LoRA adapts; the default fits SigPhi."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the pretrained generator in 4-bit."})
    index_factory: str = field(default="Flat", metadata={
        "help": "FAISS factory string of the saved corpus index: Flat (exact) up to ~100 k chunks, e.g. "
                "IVF4096,PQ64np for millions."})
    index_search_parameters: str | None = field(default=None, metadata={"help": "Its search settings, e.g. nprobe=64."})
    index_train_size: int | None = field(default=None, metadata={
        "help": "Chunks an IVF/PQ index is trained on, drawn at random (default: 256 per list)."})
    on_disk_index: bool = field(default=False, metadata={
        "help": "Stream the corpus embeddings to disk and keep the saved IVF index's lists on disk, memory-mapped when "
                "the model is loaded (a corpus bigger than memory)."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, data order and the validation split."})


@contextmanager
def timed(seconds: dict, name: str):
    start = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    yield
    seconds[name] = round(time.perf_counter() - start, 1)


def load_tasks(args: TrainRetrieverGeneratorArguments) -> tuple[RetrievalTask, RetrievalTask]:
    """(training task, validation task searching the training corpus plus its own documents)."""
    train_task = load_retrieval_task(args.train_csv, args.corpus)
    if args.val_csv:
        val_task = load_retrieval_task(args.val_csv, documents_optional=True)
    else:
        train_task, val_task = train_task.split(args.val_fraction, args.seed)
    return train_task, val_task.searching(train_task.corpus)


def build_model(args: TrainRetrieverGeneratorArguments, train_task: RetrievalTask):
    """(retriever-generator, its processor, LoRA config or None) for `args`, parts from scratch or pretrained."""
    if args.preset == "tiny":
        retriever, retriever_processor = build_tiny_retriever(train_task, args.seed, args.loss_type)
        generator, generator_processor = standin_generator(args.seed, args.reader_epochs, args.reader_vision_epochs)
        peft = None
    elif not args.generator_model:
        raise InvalidInput("give --preset tiny, or --generator_model (and --retriever_model)")
    else:
        retriever, retriever_processor = load_retriever(args.retriever_model)
        retriever.config.loss_type = args.loss_type
        generator, generator_processor = load_generator(args.generator_model, args.load_in_4bit)
        peft = generator_lora_config(args.lora_target_modules, args.lora_r) if args.lora_r else None
    config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config,
                                                                       n_docs=args.n_docs)
    model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator)
    return model, RetrieverGeneratorProcessor(retriever_processor, generator_processor), peft


def labelled(task: RetrievalTask, relevance: list[list[int]]) -> RetrievalTask:
    """The task with `relevance` as its questions' relevant documents."""
    return RetrievalTask([replace(e, gold_document_ids=ids) for e, ids in zip(task.examples, relevance)],
                         task.corpus)


def validate(model, processor, val_task: RetrievalTask, final: bool = False) -> dict:
    """The validation split's evaluation with the top `n_docs` retrieved documents; `score` is what model selection
    compares: multiple-choice accuracy, else VQA accuracy. Epoch selection generates answers only where there are no
    choices (generation is the slow part); the `final` report also generates them wherever there are reference
    answers."""
    model.retriever.build_document_index(val_task.corpus, processor.retriever_processor, name="validation corpus")
    open_ended = None if final else not val_task.is_multiple_choice
    metrics = evaluate_retriever_generator(model, processor, val_task, open_ended=open_ended)
    metrics["score"] = metrics["accuracy"] if "accuracy" in metrics else metrics["vqa_accuracy"]
    return metrics


def train_retriever_generator(args: TrainRetrieverGeneratorArguments) -> dict:
    """Train, select on validation, save to `args.output_dir`; returns the report (validation and, with
    `args.eval_csv`, test metrics, timings, pseudo-label counts, arguments)."""
    train_task, val_task = load_tasks(args)
    supervised = args.gold_documents and train_task.has_gold_documents
    hidden_gold = None  # gold documents known but not trained on: what the pseudo-labels are measured against
    if not supervised:
        hidden_gold = [e.gold_document_ids for e in train_task.examples] if train_task.has_gold_documents else None
        train_task = train_task.without_gold_documents()
    seconds, report = {}, {"supervision": "gold documents" if supervised else "answers only (pseudo-relevance)",
                           "n_train": len(train_task.examples), "n_val": len(val_task.examples)}
    with timed(seconds, "models" if args.preset != "tiny" else "models (stand-in pretraining)"):
        model, processor, peft = build_model(args, train_task)
        retriever, retriever_processor = model.retriever, processor.retriever_processor
        pictures = [e.image for e in train_task.examples] + [doc["image"] for doc in train_task.corpus]
        if args.preset == "tiny" and args.image_warm_up_epochs and any(p is not None for p in pictures):
            report["image_warm_up"] = warm_up_image_tower_on_validation(
                retriever, retriever_processor, pictures, val_task, args.pseudo_relevance_depth,
                args.image_warm_up_epochs, seed=args.seed)

    with timed(seconds, "stage 1: retriever"):
        relevance = [e.gold_document_ids for e in train_task.examples]
        if not supervised:  # RA-VQA; a pretrained generator (or the tiny one's reading stand-in) judges already
            from_scratch = args.preset == "tiny"
            relevance = pseudo_relevance_labels(
                model, processor, train_task, args.pseudo_relevance_depth,
                use_generator=not from_scratch or args.reader_epochs > 0, margin=args.pseudo_relevance_margin,
                sources=("words", "pictures") if from_scratch else ("retriever", "words", "pictures"),
                picture_copies=args.picture_copies, nearest_picture_only=args.nearest_picture_only, judge_texts=False)
            report["pseudo_labels"] = [label_quality(relevance, hidden_gold)]
            if not any(relevance):
                raise InvalidInput(f"{args.train_csv}: no question has a nearby document containing one of its "
                                   "answers; give the documents column or a corpus that holds the answers")
        train_retriever(retriever, retriever_processor, labelled(train_task, relevance), args.output_dir,
                        epochs=args.retriever_epochs, learning_rate=args.retriever_learning_rate,
                        n_negatives=args.hard_negatives, seed=args.seed)
        if not supervised and args.hard_em_epochs > 0:
            relevance = relabel(args, model, processor, train_task, judge_texts=False)
            report["pseudo_labels"].append(label_quality(relevance, hidden_gold))
            train_retriever(retriever, retriever_processor, labelled(train_task, relevance), args.output_dir,
                            epochs=args.hard_em_epochs, learning_rate=args.retriever_learning_rate,
                            n_negatives=args.hard_negatives, seed=args.seed + 1)

    with timed(seconds, "stage 2: generator warm start"):
        model.generator = warm_start_generator(
            model.generator, processor.generator_processor, train_task,
            rank_documents(retriever, retriever_processor, train_task, 1), model.config.document_template,
            args.output_dir, epochs=args.generator_epochs, learning_rate=args.generator_learning_rate,
            peft_config=peft, gradient_checkpointing=args.preset != "tiny", seed=args.seed)

    with timed(seconds, "stage 3: joint"):
        report["validation_by_epoch"] = [validate(model, processor, val_task)["score"]]
        if args.joint_epochs > 0:
            train_jointly(args, model, processor, train_task, val_task, peft, supervised, report, hidden_gold)

    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.output_dir, prefix=".index-") as scratch:
        on_disk = {"embeddings_path": Path(scratch) / "embeddings.npy",
                   "on_disk": Path(scratch) / "lists.ivfdata"} if args.on_disk_index else {}
        model.index_corpus(train_task.corpus, processor, "training corpus", args.index_factory,
                           args.index_search_parameters, index_train_size=args.index_train_size, **on_disk)
        model.save_pretrained(args.output_dir)  # the lists are copied beside the saved index
        processor.save_pretrained(args.output_dir)
    with timed(seconds, "validation"):
        report["validation"] = validate(model, processor, val_task, final=True)
    if args.eval_csv:
        with timed(seconds, "test (read once)"):
            model.retriever.build_document_index(train_task.corpus, retriever_processor, name="training corpus")
            test_task = searched_task(model, processor, load_retrieval_task(args.eval_csv, documents_optional=True),
                                      name=args.eval_csv)
            report["test"] = evaluate_retriever_generator(model, processor, test_task)
    return {**report, "seconds": seconds, "arguments": asdict(args)}


def relabel(args: TrainRetrieverGeneratorArguments, model, processor, task: RetrievalTask,
            judge_texts: bool = True) -> list[list[int]]:
    """Answers only, once the retriever has been trained: per question, the pseudo-relevant document it ranks highest
    (`pseudo_relevance_labels` with `best_only`, candidates from every neighbourhood); the generator judges documents
    with text too once it has been warm-started (`judge_texts`)."""
    return pseudo_relevance_labels(model, processor, task, args.pseudo_relevance_depth,
                                   margin=args.pseudo_relevance_margin, picture_copies=args.picture_copies,
                                   nearest_picture_only=args.nearest_picture_only,
                                   best_only=args.hard_em_epochs > 0, judge_texts=judge_texts)


def label_quality(relevance: list[list[int]], gold: list[list[int]] | None) -> dict:
    """How many questions got pseudo-relevant documents, how many per question, and, where the training CSV names
    gold documents that were not trained on (`--no_gold_documents`), the share of pseudo-labels that are gold
    (precision) and of questions with a gold one among them (recall)."""
    quality = {"questions": sum(map(bool, relevance)),
               "per_question": round(sum(map(len, relevance)) / max(1, sum(map(bool, relevance))), 3)}
    if gold is not None:
        quality["precision"] = round(sum(len(set(r) & set(g)) for r, g in zip(relevance, gold))
                                     / max(1, sum(map(len, relevance))), 4)
        quality["recall"] = round(sum(bool(set(r) & set(g)) for r, g in zip(relevance, gold)) / len(gold), 4)
    return quality


def train_jointly(args, model, processor, train_task: RetrievalTask, val_task: RetrievalTask, peft, supervised: bool,
                  report: dict, hidden_gold: list[list[int]] | None = None) -> None:
    """Stage 3, epoch by epoch, keeping the weights of the epoch that validates best (the warm start's included)."""
    peft_model = None
    if peft is not None:  # LoRA adapters again (injected in place; the merged weights stay frozen)
        from peft import get_peft_model

        peft_model = get_peft_model(model.generator, peft)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    best, best_score = {name: p.detach().clone() for name, p in trainable.items()}, report["validation_by_epoch"][0]
    joint_log = []
    for epoch in range(math.ceil(args.joint_epochs)):
        relevance = [e.gold_document_ids for e in train_task.examples]
        if not supervised:
            relevance = relabel(args, model, processor, train_task)
            report["pseudo_labels"].append(label_quality(relevance, hidden_gold))
        joint_log += train_joint_epoch(model, processor, train_task, relevance, n_docs=args.n_docs,
                                       epochs=min(1.0, args.joint_epochs - epoch), batch_size=args.joint_batch_size,
                                       generator_learning_rate=args.joint_generator_learning_rate,
                                       retriever_learning_rate=args.joint_retriever_learning_rate,
                                       seed=args.seed + epoch)
        score = validate(model, processor, val_task)["score"]
        report["validation_by_epoch"].append(score)
        if score > best_score:
            best, best_score = {name: p.detach().clone() for name, p in trainable.items()}, score
    with torch.no_grad():
        for name, p in trainable.items():
            p.copy_(best[name])
    report["selected_epoch"] = report["validation_by_epoch"].index(best_score)
    report["joint_log"] = joint_log[-3:]
    if peft_model is not None:
        model.generator = peft_model.merge_and_unload().eval()
