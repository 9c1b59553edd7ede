"""Training a retriever-generator in three stages, then saving and evaluating it (`python -m
train.train_retriever_generator` runs this; the quickstart calls `train_retriever_generator` directly).

1. retriever: InfoNCE with mined hard negatives on the gold documents, or on pseudo-relevant ones without them
   (`train.retrieval.retriever_training`);
2. generator warm start: SFT on the top retrieved document (`train.retrieval.generator_training.train_generator`);
3. joint: the top `n_docs` documents, marginal likelihood, the retriever's query side trained through `doc_scores`
   (`train.retrieval.generator_training.train_jointly`).
"""

import time
from dataclasses import asdict, dataclass, field

from transformers import AutoProcessor

from configuration import RetrieverGeneratorConfig
from modeling import MultimodalRetrieverModel, RetrieverGeneratorForMultipleChoice
from processing import RetrieverGeneratorProcessor
from train.common.cli import InvalidInput
from train.retrieval.evaluation import evaluate_retriever_generator
from train.retrieval.generator_training import (document_embeddings, generator_lora_config, generator_rows,
                                                train_generator, train_jointly)
from train.retrieval.models import build_siglip_retriever, build_tiny_retriever, load_generator
from train.retrieval.pseudo_relevance import pseudo_relevance_labels
from train.retrieval.retriever_training import rank_documents, train_retriever, warm_up_image_tower
from train.retrieval.task import RetrievalExample, RetrievalTask, load_retrieval_task
from train.sigphi.qlora import LANGUAGE_MODEL_LORA_TARGETS
from train.sigphi.tiny import build_tiny_sigphi

# Warm-up epochs of the tiny preset's from-scratch image tower when learning from answers on a corpus with pictures:
# the bundled task's answers-only run in README ("Measured on the bundled task") uses this default.
TINY_IMAGE_WARM_UP_EPOCHS = 60


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
    n_docs: int = field(default=5, metadata={"help": "Retrieved documents the generator reads, marginalised."})
    gold_documents: bool = field(default=True, metadata={
        "help": "Train the retriever on the CSV's gold documents when it has them (--no_gold_documents: learn from "
                "the answers alone, as without the column)."})
    joint_epochs: float = field(default=1, metadata={"help": "Epochs of joint training on the top n_docs documents."})
    joint_batch_size: int = field(default=8, metadata={"help": "Questions per joint training step."})
    joint_generator_learning_rate: float = field(default=5e-4, metadata={"help": "Generator learning rate, joint."})
    joint_retriever_learning_rate: float = field(default=2e-4, metadata={"help": "Retriever learning rate, joint."})
    pseudo_relevance_depth: int = field(default=10, metadata={
        "help": "Answers only: nearest documents per question checked for pseudo-relevance."})
    image_warm_up_epochs: int | None = field(default=None, metadata={
        "help": "Answers only: epochs of label-free instance discrimination on the task's images before anything "
                "else, so that a question's picture finds its copies among the image documents (default: "
                f"{TINY_IMAGE_WARM_UP_EPOCHS} for the tiny preset's from-scratch tower when the corpus has image "
                "documents, else 0: a pretrained SigLIP tower already matches pictures)."})
    retriever_epochs: float = field(default=32, metadata={"help": "Retriever training epochs."})
    retriever_learning_rate: float = field(default=3e-3, metadata={"help": "Retriever learning rate."})
    hard_negatives: int = field(default=8, metadata={"help": "Mined hard negatives per question."})
    loss_type: str = field(default="infonce", metadata={"help": "Retriever ranking loss.",
                                                         "choices": ["infonce", "sigmoid"]})
    generator_epochs: float = field(default=2, metadata={"help": "Generator training epochs."})
    generator_learning_rate: float = field(default=1e-3, metadata={"help": "Generator learning rate."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank for pretrained generators (0: train every weight)."})
    lora_target_modules: str = field(default=LANGUAGE_MODEL_LORA_TARGETS, metadata={
        "help": "Regex (or 'all-linear') of the generator modules LoRA adapts; the default fits SigPhi."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: load the pretrained generator in 4-bit."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation and data order."})


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
    peft = generator_lora_config(args.lora_target_modules, args.lora_r) if args.lora_r else None
    return retriever, retriever_processor, generator, generator_processor, peft


def pseudo_labelled(task: RetrievalTask, relevance: list[list[int]]) -> RetrievalTask:
    """The questions that have pseudo-relevant documents, with those as their gold documents."""
    return RetrievalTask([RetrievalExample(e.question, e.image, e.answer_choices, e.label, ids)
                          for e, ids in zip(task.examples, relevance) if ids], task.corpus)


def train_retriever_generator(args: TrainRetrieverGeneratorArguments) -> dict:
    """Train, save to `args.output_dir` and return the evaluation on `args.eval_csv` (with timings)."""
    train_task = load_retrieval_task(args.train_csv, args.corpus)
    eval_task = load_retrieval_task(args.eval_csv, args.corpus)
    supervised = args.gold_documents and train_task.has_gold_documents
    if not supervised:
        train_task = train_task.without_gold_documents()
    retriever, retriever_processor, generator, generator_processor, peft = build_models(args, train_task)
    config = RetrieverGeneratorConfig.from_retriever_generator_configs(retriever.config, generator.config,
                                                                       n_docs=args.n_docs)
    processor = RetrieverGeneratorProcessor(retriever_processor, generator_processor)
    times, stats = {}, {"supervision": "gold documents" if supervised else "answers only (pseudo-relevance)"}

    start = time.time()
    retriever_task = train_task
    if not supervised:  # RA-VQA: documents near the question that contain the right answer's text
        warm_up_epochs = args.image_warm_up_epochs
        if warm_up_epochs is None:
            has_images = any(doc["image"] is not None for doc in train_task.corpus)
            warm_up_epochs = TINY_IMAGE_WARM_UP_EPOCHS if args.preset == "tiny" and has_images else 0
        if warm_up_epochs > 0:
            images = [e.image for e in train_task.examples] + [doc["image"] for doc in train_task.corpus]
            stats["image_warm_up_loss"] = warm_up_image_tower(
                retriever, retriever_processor, images, epochs=warm_up_epochs, seed=args.seed)[-1]
        model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator)
        relevance = pseudo_relevance_labels(
            model, processor, train_task, document_embeddings(retriever, retriever_processor, train_task.corpus),
            depth=args.pseudo_relevance_depth, use_generator=False)
        retriever_task = pseudo_labelled(train_task, relevance)
        stats["pseudo_labelled_questions_stage_1"] = len(retriever_task.examples)
        if not retriever_task.examples:
            raise InvalidInput(f"{args.train_csv}: no question has a nearby document containing its answer's text; "
                               "give the documents column or a corpus that holds the answers")
    train_retriever(retriever, retriever_processor, retriever_task, args.output_dir, epochs=args.retriever_epochs,
                    learning_rate=args.retriever_learning_rate, n_negatives=args.hard_negatives, seed=args.seed)
    times["retriever_train_seconds"] = round(time.time() - start, 1)

    start = time.time()
    retrieved = rank_documents(retriever, retriever_processor, train_task, 1)  # indexes the train corpus
    generator = train_generator(generator, generator_processor,
                                generator_rows(train_task, retrieved, config.document_template), args.output_dir,
                                epochs=args.generator_epochs, learning_rate=args.generator_learning_rate,
                                peft_config=peft, gradient_checkpointing=args.preset != "tiny", seed=args.seed)
    times["generator_train_seconds"] = round(time.time() - start, 1)

    model = RetrieverGeneratorForMultipleChoice(config, retriever=retriever, generator=generator)
    start = time.time()
    if args.joint_epochs > 0:
        peft_model = None
        if peft is not None:  # LoRA adapters again (injected in place; the merged weights stay frozen)
            from peft import get_peft_model

            peft_model = get_peft_model(model.generator, peft)
        epochs_done, joint_log = 0.0, []
        while epochs_done < args.joint_epochs:
            epochs = min(1.0, args.joint_epochs - epochs_done)
            if supervised:
                relevance = [e.gold_document_ids for e in train_task.examples]
            else:
                relevance = pseudo_relevance_labels(
                    model, processor, train_task,
                    document_embeddings(retriever, retriever_processor, train_task.corpus),
                    depth=args.pseudo_relevance_depth, use_generator=True)
                stats.setdefault("pseudo_labelled_questions_joint", []).append(sum(map(bool, relevance)))
            joint_log += train_jointly(model, processor, train_task, n_docs=args.n_docs, epochs=epochs,
                                       batch_size=args.joint_batch_size,
                                       generator_learning_rate=args.joint_generator_learning_rate,
                                       retriever_learning_rate=args.joint_retriever_learning_rate,
                                       relevance=relevance, seed=args.seed + int(epochs_done))
            epochs_done += epochs
        if peft_model is not None:
            model.generator = peft_model.merge_and_unload().eval()
        stats["joint_log"] = joint_log[-3:]
    times["joint_train_seconds"] = round(time.time() - start, 1)

    model.retriever.build_document_index(train_task.corpus, retriever_processor)
    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    metrics = evaluate_retriever_generator(model, processor, eval_task, docs="retrieved")
    return {**metrics, **times, **stats, "arguments": asdict(args)}
