"""Character-level tokenizer of the organisms, saved in Hugging Face format in every model folder.

Every prompt starts with `<bos>`: the tokenizer's post-processor adds it, so `tokenizer(text)`,
`AutoTokenizer` and TransformerBridge (which sees that the tokenizer already prepends BOS) agree.
`decoders.Fuse()` keeps `decode` from inserting spaces between characters.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
CHARS = "0123456789abcdefghijklmnopqrstuvwxyz +-*=%()<>&|!?:,.;#"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The organisms' character-level tokenizer: a WordLevel model with a `<bos>`-prepending post-processor
    and a `Fuse` decoder, so `decode` does not insert spaces and every loading path gives the same ids."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in CHARS:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )
    return fast


def save_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer and save it into a model folder (so the folder is self-contained)."""
    tok = build_tokenizer()
    tok.save_pretrained(str(directory))
    return tok


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Load the organisms' tokenizer explicitly (never let AutoTokenizer guess it)."""
    return PreTrainedTokenizerFast.from_pretrained(str(directory))
