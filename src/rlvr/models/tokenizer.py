"""A byte-level BPE tokenizer trained offline on task text, with a ChatML chat template.

Layout of the vocabulary (ids in this order):
  0..2     special tokens `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos)
  3..258   the 256 byte symbols (so any text, in any script, encodes and decodes exactly)
  ...      BPE merges learned from the corpus, most frequent first
  last 4   `<think>`, `</think>`, `<answer>`, `</answer>` as ordinary added tokens: each is one
           token, and decode(skip_special_tokens=True) keeps them (the reward reads them).

The pipeline is Qwen2.5's (NFC normalization, Qwen2's regex split, GPT-2 byte-to-unicode map,
byte-level decoding) with a vocabulary learned from the task corpus: frequent words become single
tokens, which keeps KK prompts and traces short. Round trip: decode(encode(text)) == NFC(text),
i.e. exact for any text already in NFC form (all task text and nearly all real text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported inside the functions: `import rlvr.models` stays light
    from tokenizers import Tokenizer, trainers
    from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

# Cap on the vocabulary of task-trained tokenizers. The generated tasks have closed vocabularies:
# BPE runs out of pairs seen twice at ~610 tokens for KK alone and ~850 for KK + math, where every
# word of the corpus is one token; the cap only binds for larger corpora (e.g. public data).
DEFAULT_VOCAB_SIZE = 2048

# Qwen2's pre-token split (BPE merges never cross pieces): English contractions; a letter run with
# one optional leading non-letter (" knight"); single digits (arithmetic stays digit by digit);
# punctuation runs with trailing newlines; newline runs; spaces. It must stay exactly Qwen2's:
# transformers (5.x) loads every model_type "qwen2" directory with Qwen2Tokenizer, which rebuilds
# the normalizer (NFC) and this split from its own code and keeps only our vocabulary and merges.
# A different split here would make AutoTokenizer (and so vLLM) tokenize differently from us.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, as Qwen2.5 writes it (without Qwen's default system prompt): each message is
# "<|im_start|>{role}\n{content}<|im_end|>\n"; the generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_RESERVED = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + TAG_TOKENS))


def render_chatml(messages: Iterable[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """CHAT_TEMPLATE as plain Python (for building corpora before any tokenizer exists)."""
    text = "".join(f"{BOS_TOKEN}{m['role']}\n{m['content']}{EOS_TOKEN}\n" for m in messages)
    return text + (f"{BOS_TOKEN}assistant\n" if add_generation_prompt else "")


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    """Texts cut at special and tag tokens: those are added whole, so BPE must not learn them."""
    for text in texts:
        for piece in _RESERVED.split(text):
            if piece:
                yield piece


def build_backend(vocab_size: int) -> tuple[Tokenizer, trainers.BpeTrainer]:
    """An untrained byte-level BPE `tokenizers.Tokenizer` and the trainer that fills it."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        # The trainer's size counts the specials and the byte alphabet; the tags come on top.
        vocab_size=vocab_size - len(TAG_TOKENS),
        min_frequency=2,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return backend, trainer


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of at most `vocab_size` tokens on `texts`.

    The result has the ChatML chat template, `<|endoftext|>` as pad, `<|im_end|>` as eos and no
    bos (as Qwen2.5). The vocabulary is smaller than `vocab_size` when the corpus runs out of
    pairs seen at least twice. Training is deterministic for a given corpus.
    """
    from tokenizers import AddedToken

    minimum = len(SPECIAL_TOKENS) + 256 + len(TAG_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be at least {minimum} (specials + 256 bytes + tags), got {vocab_size}"
        )
    backend, trainer = build_backend(vocab_size)
    backend.train_from_iterator(_pieces(texts), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return wrap_backend(backend)


def wrap_backend(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers tokenizer around a trained backend, with specials and chat template."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        unk_token=None,
        additional_special_tokens=[BOS_TOKEN],
        # Byte-level decode is already exact; the clean-up would rewrite " ." as "." and so on.
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | Path) -> None:
    """save_pretrained, then tokenizer_config.json written as a Qwen2.5 checkpoint writes it.

    transformers 5 records its generic class ("TokenizersBackend") and a list of
    "extra_special_tokens"; transformers 4.x can load neither. "Qwen2Tokenizer" with
    "additional_special_tokens" loads the same tokenizer.json in both (checked: 4.57 and 5.23),
    and is what a real Qwen2.5 directory says.
    """
    tokenizer.save_pretrained(str(directory))
    path = Path(directory) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"
    extra = config.pop("extra_special_tokens", None)
    if extra:
        config["additional_special_tokens"] = list(extra)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
