"""Fine-tuning the generator on questions shown with their *retrieved* documents.

Two stages. `train_generator`: TRL's `SFTTrainer` on one retrieved document per question (a warm start; rows are
TRL's conversational vision format built by the same `RetrieverGeneratorProcessor.conversation` that builds
prompts at inference, loss on the answer only). `train_jointly`: the generator reads the top `n_docs` retrieved
documents, each in its own sequence, and is trained with the marginal likelihood over them (RAG-Sequence), wrong
documents included, while the retriever's query side is trained through the same loss by way of `doc_scores`,
and each document read is judged on its own (`document_relevance_loss`: the answer from a relevant document, no
answer from an irrelevant one).
Without gold documents, `train.retrieval.pseudo_relevance` says which documents count as relevant.
"""

import json
import os

import numpy as np
import torch
from peft import LoraConfig

from modeling.modeling_retriever import ranking_loss
from modeling.transformers_compat import disable_activation_checkpointing, is_activation_checkpointing
from processing import RetrieverGeneratorProcessor
from train.common.precision import gpu_supports_bf16
from train.retrieval.task import RetrievalTask


def generator_rows(task: RetrievalTask, document_ids, document_template: str) -> list[dict]:
    """One conversation per question: its `document_ids` row of documents, its image, question and right answer."""
    rows = []
    for example, ids in zip(task.examples, document_ids):
        messages, images = RetrieverGeneratorProcessor.conversation(
            example.question, example.image, task.documents([int(i) for i in ids]), document_template,
            answer=example.answer_choices[example.label])
        rows.append({"messages": messages, "images": images})
    return rows


def generator_lora_config(target_modules: str | list[str], r: int = 16, alpha: int | None = None) -> LoraConfig:
    """LoRA adapters on `target_modules` (a regex, a list of names, or "all-linear")."""
    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0, target_modules=target_modules,
                      task_type="CAUSAL_LM")


def train_generator(generator, processor, rows: list[dict], output_dir: str, epochs: float = 2,
                    batch_size: int = 16, learning_rate: float = 1e-3, peft_config: LoraConfig | None = None,
                    gradient_checkpointing: bool = False, seed: int = 0):
    """Fit `generator` to answer `rows`; with `peft_config`, train LoRA adapters and return the merged model."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=os.path.join(output_dir, "checkpoints", "generator"), num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate, lr_scheduler_type="cosine",
        warmup_steps=0.05, weight_decay=0.0, logging_steps=10, save_strategy="epoch", save_total_limit=1,
        assistant_only_loss=True, max_length=None, gradient_checkpointing=gradient_checkpointing,
        bf16=gpu_supports_bf16(), report_to="none", seed=seed)
    trainer = SFTTrainer(model=generator, args=args, train_dataset=dataset, processing_class=processor,
                         peft_config=peft_config)
    trainer.train()
    model = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
    return model.eval()


# Joint training: the generator reads the top-k retrieved documents, marginalised (RAG-Sequence) ------------------

def document_embeddings(retriever, processor, corpus: list[dict]) -> torch.Tensor:
    """(n_docs, dim) embeddings of the whole corpus with the retriever's current weights (the refreshed index)."""
    was_training = retriever.training
    retriever.eval()
    embeddings = torch.from_numpy(retriever.embed_documents(corpus, processor)).to(retriever.device)
    retriever.train(was_training)
    return embeddings


def document_relevance_loss(doc_choice_scores: torch.Tensor, labels: torch.LongTensor,
                            relevant: torch.Tensor) -> torch.Tensor:
    """Teach the generator to judge each document it reads: (batch, n_docs, choices) per-document choice scores,
    (batch,) right choices, (batch, n_docs) bool relevant documents -> a scalar.

    With a relevant document, the right choice (cross-entropy); with an irrelevant one, no choice at all (the
    cross-entropy to the uniform distribution over the choices). Why: the marginal likelihood alone never asks
    this. On training questions the retriever ranks the right document first, so the wrong documents get little
    posterior weight and their choice scores little gradient; the generator then answers each wrong document's
    colour with confidence, and at test time, where the posterior is less sure, those wrong votes outweigh the right
    one. A generator that spreads its choice scores evenly over a wrong document leaves the marginal's argmax to
    the documents that do answer the question, so reading more documents cannot hurt.
    """
    log_probs = doc_choice_scores.float().log_softmax(-1)  # (batch, n_docs, choices)
    right = labels.to(log_probs.device)[:, None, None].expand(-1, log_probs.shape[1], 1)  # (batch, n_docs, 1)
    answer = -log_probs.gather(-1, right)[..., 0]
    abstain = -log_probs.mean(-1) - np.log(log_probs.shape[-1])  # 0 for the uniform distribution
    return torch.where(relevant.to(log_probs.device), answer, abstain).mean()


def train_jointly(model, processor, task: RetrievalTask, n_docs: int = 5, epochs: float = 1, batch_size: int = 8,
                  generator_learning_rate: float = 5e-4, retriever_learning_rate: float = 2e-4,
                  relevance: list[list[int]] | None = None, retrieval_loss_weight: float = 1.0,
                  document_loss_weight: float = 1.0, seed: int = 0, log_every: int = 25) -> list[dict]:
    """Train the generator on the top `n_docs` retrieved documents (wrong ones included) with the marginal
    likelihood, and the retriever's query side through the same loss via `doc_scores` (end to end, as RAG).

    The document side is refreshed, not back-propagated: the corpus is re-embedded with the current weights at the
    start of every epoch (the retriever's towers are shared by queries and documents, so training the query side
    moves the documents too), and within an epoch the document embeddings are constants. `relevance` (per
    question, ids of relevant documents: the gold ones, or pseudo-relevant ones) adds, for the questions that have
    some, the retriever's InfoNCE over the whole corpus (weighted by `retrieval_loss_weight`) and a per-document
    loss (`document_relevance_loss`, weighted by `document_loss_weight`). Returns the log.
    """
    retriever, generator, template = model.retriever, model.generator, model.config.document_template
    if is_activation_checkpointing(generator):  # it turns the KV cache the scoring reuses off
        disable_activation_checkpointing(generator)
    generator_params = [p for p in generator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": generator_params, "lr": generator_learning_rate},
                                   {"params": list(retriever.parameters()), "lr": retriever_learning_rate}],
                                  weight_decay=0.0)
    rng = np.random.default_rng(seed)
    n_examples = len(task.examples)
    total_steps = max(1, int(np.ceil(epochs * n_examples / batch_size)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * step / total_steps)))
    log, step, running = [], 0, []
    while step < total_steps:
        doc_embeddings = document_embeddings(retriever, processor.retriever_processor, task.corpus)
        model.train()
        order = rng.permutation(n_examples)
        for start in range(0, n_examples, batch_size):
            if step >= total_steps:
                break
            examples = [task.examples[i] for i in order[start:start + batch_size]]
            labels = torch.tensor([e.label for e in examples])
            queries = processor.retriever_processor.process_queries([e.question for e in examples],
                                                                    [e.image for e in examples]).to(retriever.device)
            all_scores = retriever.score(retriever.encode_queries(**queries), doc_embeddings)  # (batch, corpus)
            ids = all_scores.detach().topk(n_docs, dim=-1).indices
            doc_scores = all_scores.gather(1, ids)  # the retriever's logits of the documents read, with grad
            inputs = processor.marginal_inputs([e.question for e in examples], [e.image for e in examples],
                                               [task.documents(row) for row in ids.tolist()],
                                               [e.answer_choices for e in examples], template)
            output = model(**inputs.to(generator.device), doc_scores=doc_scores, labels=labels)
            loss = output.loss
            retrieval_loss, document_loss = torch.zeros(()), torch.zeros(())
            if relevance is not None:
                rows = [b for b, i in enumerate(order[start:start + batch_size]) if relevance[i]]
                if rows:
                    targets = torch.zeros(len(rows), len(task.corpus), dtype=torch.bool)
                    for r, b in enumerate(rows):
                        targets[r, relevance[order[start + b]]] = True
                    retrieval_loss = ranking_loss(all_scores[rows], targets.to(all_scores.device))
                    document_loss = document_relevance_loss(output.doc_choice_scores[rows], labels[rows],
                                                            targets.gather(1, ids[rows].cpu()))
                    loss = loss + retrieval_loss_weight * retrieval_loss + document_loss_weight * document_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            running.append((float(output.loss.detach()), float(retrieval_loss.detach()),
                            float(document_loss.detach()),
                            float((output.logits.argmax(-1).cpu() == labels).float().mean())))
            if step % log_every == 0 or step == total_steps:
                mean = np.mean(running, axis=0)
                log.append({"step": step, "marginal_loss": round(float(mean[0]), 4),
                            "retrieval_loss": round(float(mean[1]), 4), "document_loss": round(float(mean[2]), 4),
                            "train_accuracy": round(float(mean[3]), 4)})
                print(json.dumps(log[-1]), flush=True)
                running = []
    model.eval()
    return log
