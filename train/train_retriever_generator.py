"""Train a retriever-generator for visual question answering from seed CSVs: the retriever, a warm start of the
generator on the top retrieved document, then both jointly on the top `--n_docs` documents with the marginal
likelihood, choosing on a validation split.

    python -m train.train_retriever_generator --train_csv data/retrieval/train.csv \\
        --val_csv data/retrieval/val.csv --corpus data/retrieval/corpus.jsonl --preset tiny --output_dir O

`--preset tiny` builds both models from scratch (a 2-layer SigLIP-style text tower and a small timm ResNet for
the retriever, the tiny SigPhi as generator), gives them stand-in pretraining and trains every weight: random weights
have nothing for LoRA to adapt. Without it, real pretrained parts are fine-tuned: `--retriever_model` (a published
dual encoder such as SigLIP or CLIP, or a saved retriever) and `--generator_model`, with LoRA adapters (QLoRA with
`--load_in_4bit`). Answers are multiple choice (`answer_choices` + `label`) or open-ended (`answers`); gold documents
(`documents`) are optional when `--corpus` holds what to retrieve. Writes `O/retriever`, `O/generator` (each loadable
alone; the weights' only copy), the composite `O` (config, code, processors; the index holds the training corpus) and
prints a JSON report: validation metrics (and `--eval_csv`'s, read once at the end), timings, pseudo-label counts.
Stages: `train/retrieval/pipeline.py`.
"""

import json

from train.common.cli import run_cli
from train.retrieval.pipeline import TrainRetrieverGeneratorArguments, train_retriever_generator


def main(args: TrainRetrieverGeneratorArguments) -> None:
    print(json.dumps(train_retriever_generator(args), indent=2))


if __name__ == "__main__":
    run_cli(main, TrainRetrieverGeneratorArguments)
