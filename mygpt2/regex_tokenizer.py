"""The original myGPT2 module name for the trainable tokenizer; it lives in `mygpt2.tokenizer`."""

from mygpt2.tokenizer import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    RegexTokenizer,
    load_tokenizer,
)

__all__ = ["GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN", "RegexTokenizer", "load_tokenizer"]
