"""Stand-ins for pretrained checkpoints, used only by the quickstart's tiny from-scratch SigPhi (`train.quickstart`).

A real SigPhi starts from SigLIP, whose features already separate what images show, and from Phi-3,
which already follows a chat and answers from what is in its context. Tiny random parts know neither,
so the quickstart first gives them that knowledge briefly, then runs stage 1 and stage 2 exactly as a
user would on real checkpoints:

- the vision tower learns to tell the digits apart (a linear classifier on its mean-pooled tokens,
  trained with transformers' `Trainer`; the classifier is thrown away afterwards);
- the language model learns the chat format and to answer "What digit is shown in this image?" with
  the digit written at the start of the user's turn — where the image will later be — which is a
  text-only version of reading the answer from context (TRL's `SFTTrainer`).

Neither stand-in ever sees the image and its answer together: connecting them is the projector's job
(stage 1) and the LoRA fine-tuning's (stage 2).
"""

import copy
import random

import torch
from datasets import Dataset
from torch import nn
from torchvision.transforms.v2 import RandomAffine
from transformers import Phi3ForCausalLM, Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from processing.processing_sigphi import to_rgb
from train.common.vqa_data import row_question_answer


class TowerClassifier(nn.Module):
    """A timm tower with a linear head on its mean-pooled tokens: (B, 3, H, W) -> (B, n_classes)."""

    def __init__(self, tower: nn.Module, n_classes: int):
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(tower.num_features, n_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.head(self.tower.forward_features(pixel_values).mean(dim=1))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def pretrain_vision_tower(model, processor, dataset: Dataset, training_args: TrainingArguments) -> float:
    """Train `model`'s vision tower in place to classify the answers of `dataset`; returns the last loss.

    Images are randomly shifted, rotated and scaled, as in real encoder pretraining, so the features
    generalise to handwriting the tower has not seen instead of memorising 1,437 pictures. The fill value
    -1 is black after SigLIP's normalisation, the digits' background.
    """
    labels = sorted({row_question_answer(row)[1] for row in dataset})
    augment = RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=-1.0)
    # preprocess once; augment the (3, H, W) tensors at the model's resolution on every draw
    pixel_values, targets = _pixels_and_targets(processor, dataset, labels)
    examples = [{"index": i} for i in range(len(targets))]

    def collate(batch: list[dict]) -> dict:
        indices = torch.tensor([example["index"] for example in batch])
        return {"pixel_values": torch.stack([augment(image) for image in pixel_values[indices]]),
                "labels": targets[indices]}

    classifier = TowerClassifier(model.model.vision_tower, len(labels))
    training_args.remove_unused_columns = False
    trainer = Trainer(model=classifier, args=training_args, train_dataset=examples, data_collator=collate)
    return trainer.train().training_loss


def _pixels_and_targets(processor, dataset: Dataset, labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) preprocessed first images and (N,) indices of each row's answer in `labels`."""
    label_ids = {label: i for i, label in enumerate(labels)}
    pixel_values = processor.image_processor(images=[to_rgb(row["images"][0]) for row in dataset],
                                             return_tensors="pt")["pixel_values"]
    return pixel_values, torch.tensor([label_ids[row_question_answer(row)[1]] for row in dataset])


@torch.no_grad()
def linear_probe_accuracy(model, processor, train: Dataset, test: Dataset) -> float:
    """Test accuracy of a logistic regression on the frozen tower's mean-pooled tokens, fitted on `train`.

    This is what the stand-in tower alone knows about the answers: the quickstart reports it beside SigPhi's
    accuracy, so the share of the result that the recipe (projector + LoRA) adds is visible."""
    from sklearn.linear_model import LogisticRegression

    labels = sorted({row_question_answer(row)[1] for row in train})
    tower = model.model.vision_tower.eval()
    features = {}
    for name, rows in (("train", train), ("test", test)):
        pixel_values, targets = _pixels_and_targets(processor, rows, labels)
        pooled = torch.cat([tower.forward_features(chunk).mean(dim=1) for chunk in pixel_values.split(256)])
        features[name] = (pooled.float().numpy(), targets.numpy())
    probe = LogisticRegression(max_iter=5000).fit(*features["train"])
    return float(probe.score(*features["test"]))


def context_answer_rows(answers: list[str], question: str, n_rows: int, seed: int = 0) -> Dataset:
    """Text-only chats whose answer is written at the start of the user's turn, where the image will go."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        answer = rng.choice(answers)
        rows.append({"messages": [{"role": "user", "content": f"{answer} {question}"},
                                  {"role": "assistant", "content": answer}]})
    return Dataset.from_list(rows)


def pretrain_language_model(model, processor, dataset: Dataset, training_args: SFTConfig) -> float:
    """Train `model`'s decoder and LM head in place on text-only chats; returns the last loss.

    A `Phi3ForCausalLM` view sharing SigPhi's decoder and LM head lets TRL train them as a plain LLM.
    """
    text_model = Phi3ForCausalLM(model.config.text_config)
    text_model.model = model.model.language_model
    text_model.lm_head = model.lm_head
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.chat_template = processor.chat_template
    trainer = SFTTrainer(model=text_model, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    return trainer.train().training_loss
