"""Write the bundled datasets.

    python -m train.make_dataset digits --output_dir data/digits              # Parquet, TRL conversational
    python -m train.make_dataset digits --output_dir data/digits --format csv # the seed's image,question,answer CSV
    python -m train.make_dataset retrieval_vqa --output_dir data/retrieval   # multiple-choice retrieval VQA CSVs
    python -m train.make_dataset retrieval_vqa --passages --output_dir data/passages  # facts as passages
    python -m train.make_dataset encyclopedia --output_dir data/encyclopedia  # pictures + articles, open-ended

`digits` is scikit-learn's `load_digits()` (1,797 handwritten 8×8 digits) as visual question answering:
"What digit is shown in this image?" → "7". Each image is the original 8×8 greyscale picture with values
mapped to 0–255 by round(v * 255 / 16); resizing to the model's input size is the processor's job, so a
user's own 8×8 digit works the same way. The split is fixed: test = images whose index is divisible by 5.
`retrieval_vqa` and `encyclopedia` are retrieval tasks (train, validation and test CSVs with their corpus files):
see `train.bundled_data.retrieval_vqa` and `train.bundled_data.encyclopedia`.
"""

from dataclasses import dataclass, field

from train.bundled_data.digits import DIGIT_QUESTION, digits_splits, write_csv_splits
from train.bundled_data.encyclopedia import write_encyclopedia
from train.bundled_data.retrieval_vqa import write_retrieval_vqa
from train.common.cli import run_cli
from train.common.vqa_data import conversation_row, write_parquet_splits


@dataclass
class MakeDatasetArguments:
    dataset: str = field(metadata={"help": "Which bundled dataset to write.",
                                   "choices": ["digits", "retrieval_vqa", "encyclopedia"]})
    output_dir: str = field(metadata={"help": "Folder to write the dataset to."})
    format: str = field(default="parquet", metadata={"help": "parquet: TRL conversational folder; csv: seed CSV.",
                                                     "choices": ["parquet", "csv"]})
    passages: bool = field(default=False, metadata={
        "help": "retrieval_vqa: write each catalogue's facts as passages of two to four sentences."})


def main(args: MakeDatasetArguments) -> None:
    if args.dataset in ("retrieval_vqa", "encyclopedia"):
        sizes = (write_retrieval_vqa(args.output_dir, passages=args.passages) if args.dataset == "retrieval_vqa"
                 else write_encyclopedia(args.output_dir))
        print(f"wrote {args.dataset} (train: {sizes['train']}, val: {sizes['val']}, test: {sizes['test']}, corpus "
              f"distractors: {sizes['corpus']}) as seed CSVs to {args.output_dir}")
        return
    splits = digits_splits()
    if args.format == "csv":
        write_csv_splits(splits, DIGIT_QUESTION, args.output_dir)
    else:
        write_parquet_splits({split: [conversation_row(image, DIGIT_QUESTION, answer) for _, image, answer in items]
                              for split, items in splits.items()}, args.output_dir)
    sizes = ", ".join(f"{split}: {len(items)}" for split, items in splits.items())
    print(f"wrote {args.dataset} ({sizes}) as {args.format} to {args.output_dir}")


if __name__ == "__main__":
    run_cli(main, MakeDatasetArguments, positional="dataset")
