"""Local models and tokenizers: loading Hugging Face directories, and the offline model factory.

init_model(dir, preset="tiny")        tokenizer trained on task text + random Qwen2 model, HF format
load_tokenizer(dir), load_model(dir)  any local HF checkpoint (never the hub)
prompt_ids(tok, messages, prefix)     chat template + response prefix -> token ids
eos_token_ids(tok, config)            every id that ends a completion
decode_completion(tok, ids)           completion text, special tokens dropped, tags kept
"""

from rlvr.models.chat import batch_prompt_ids, decode_completion, eos_token_ids, prompt_ids, prompt_text
from rlvr.models.factory import PRESETS, Preset, count_params, init_model, task_corpus, tokens_per_word
from rlvr.models.loading import ModelLoadError, load_model, load_tokenizer
from rlvr.models.tokenizer import CHAT_TEMPLATE, DEFAULT_VOCAB_SIZE, train_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_VOCAB_SIZE",
    "PRESETS",
    "ModelLoadError",
    "Preset",
    "batch_prompt_ids",
    "count_params",
    "decode_completion",
    "eos_token_ids",
    "init_model",
    "load_model",
    "load_tokenizer",
    "prompt_ids",
    "prompt_text",
    "task_corpus",
    "tokens_per_word",
    "train_tokenizer",
]
