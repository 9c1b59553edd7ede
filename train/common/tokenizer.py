"""A byte-level BPE tokenizer built locally, standing in for Phi-3's tokenizer in tiny models and tests.

Byte-level (like Phi-3's byte fallback) so that any text, including words never seen while training the
merges, becomes tokens and never an unknown token. Special tokens follow Phi-3's chat format.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from processing import CHAT_TEMPLATE, IMAGE_TOKEN

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|end|>"
CHAT_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>"]

DIGIT_WORDS = "zero one two three four five six seven eight nine".split()
DEFAULT_TEXTS = [
    "What digit is shown in this image?",
    "What is in this picture?",
    "Can you describe this image?",
    "Explain the purpose of image",
    "Can you comment on size and kind of this image",
    "Create a interesting story about this image",
    "Elaborate the setting of the image",
    "The image shows a handwritten digit. The answer is",
    "Which of the following is correct? Answer with the letter of the choice.",
    "Document: In catalogue the attribute of digit is colour, shape, size, weight, price, label.",
    *[f"{d} {w} {w.capitalize()}" for d, w in enumerate(DIGIT_WORDS)],
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ( ) [ ] { } - _ / \" '",
]


def build_byte_level_tokenizer(texts: list[str] | None = None, vocab_size: int = 512,
                               image_token: str | None = IMAGE_TOKEN) -> PreTrainedTokenizerFast:
    """Train byte-level BPE merges on `texts` and wrap them with Phi-3-style special tokens and chat template.

    `image_token=None` gives a text-only tokenizer, like a language model checkpoint's before SigPhi adds `<image>`.
    """
    special_tokens = [PAD_TOKEN, EOS_TOKEN, *CHAT_TOKENS, *([image_token] if image_token else [])]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((texts or DEFAULT_TEXTS) * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )
    tokenizer.add_tokens(special_tokens[2:], special_tokens=True)
    return tokenizer
