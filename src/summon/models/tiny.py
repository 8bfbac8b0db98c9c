"""Tiny random encoders (2 layers, width 32) with a built-in word-piece vocabulary, for offline tests."""

from __future__ import annotations

import string
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, DistilBertConfig, MPNetConfig, PreTrainedTokenizerFast, RobertaConfig

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = (  # noqa: SIM905 - a word list reads better as one string
    "the a an and or but not no is are was were be been it this that these those of to in on at for with by "
    "from as i you he she we they my your his her our their good bad great terrible awful fine movie film "
    "story plot acting actor actress music fun boring love hate best worst very really so too more most news "
    "sport game team win won lose lost market stock price company bank government election minister city "
    "world new old year day time people man woman children life work"
).split()


def tiny_vocab() -> list[str]:
    """Special tokens, common words, single characters and their ``##`` continuations (~250 entries)."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return _SPECIALS + _WORDS + chars + ["##" + c for c in chars]


def tiny_tokenizer(max_length: int = 128) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer over :func:`tiny_vocab`, built in memory (no files, no hub)."""
    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=50))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _tiny_config(name: str, vocab_size: int) -> Any:
    common = {"vocab_size": vocab_size, "max_position_embeddings": 160, "pad_token_id": 0}
    if name == "tiny-bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common)
    if name == "tiny-roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             bos_token_id=2, eos_token_id=3, **common)
    if name == "tiny-mpnet":
        return MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           bos_token_id=2, eos_token_id=3, **common)
    if name == "tiny-distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
    raise ValueError(f"unknown tiny model '{name}'; choose from {', '.join(TINY_MODELS)}")


TINY_MODELS = ("tiny-bert", "tiny-mpnet", "tiny-roberta", "tiny-distilbert")


def tiny_encoder(name: str = "tiny-bert", *, seed: int = 0) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    """A random tiny base encoder and its tokenizer; the same seed gives the same weights."""
    from transformers import AutoModel

    tokenizer = tiny_tokenizer()
    config = _tiny_config(name, len(tokenizer))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    return model.eval(), tokenizer
