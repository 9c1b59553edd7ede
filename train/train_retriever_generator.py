"""Train a retriever-generator for multiple-choice VQA from seed CSVs: the retriever, a warm start of the generator
on the top retrieved document, then both jointly on the top `--n_docs` documents with the marginal likelihood.

    python -m train.train_retriever_generator --train_csv data/retrieval/train.csv \\
        --eval_csv data/retrieval/test.csv --corpus data/retrieval/corpus.jsonl --preset tiny --output_dir O

`--preset tiny` builds both models from scratch (a 2-layer SigLIP-style text tower and a small timm ResNet for
the retriever, the tiny SigPhi as generator) and trains every weight: random weights have nothing for LoRA to
adapt. Without it, real pretrained parts are fine-tuned: a retriever from SigLIP (or `--retriever_model`) and the
`--generator_model`, with LoRA adapters (QLoRA with `--load_in_4bit`). Writes `O/retriever`, `O/generator` (each
loadable alone; the weights' only copy), the composite `O` (config, code, processors) and prints the evaluation on
`--eval_csv` as JSON.

Stages:
1. retriever: InfoNCE with mined hard negatives on the gold documents (`documents` column), or, without them
   (`--no_gold_documents` or no column), on pseudo-relevant documents: among each question's nearest documents,
   those containing the right choice's text (RA-VQA).
2. generator warm start: SFT on the top retrieved document (TRL).
3. joint: `--joint_epochs` over the top `--n_docs` documents, each read in its own sequence, loss = marginal
   likelihood (RAG-Sequence) + cross-entropy over the choices; the retriever's query side learns through
   `doc_scores`, the document index is refreshed (corpus re-embedded) every epoch, and the retriever's InfoNCE on
   the gold (or, answers only, the pseudo-relevant: contains the answer *and* the generator answers right with it,
   recomputed every epoch) documents is added.
"""

import json

from train.common.cli import run_cli
from train.retrieval.staged_training import TrainRetrieverGeneratorArguments, train_retriever_generator


def main(args: TrainRetrieverGeneratorArguments) -> None:
    print(json.dumps(train_retriever_generator(args), indent=2))


if __name__ == "__main__":
    run_cli(main, TrainRetrieverGeneratorArguments)
