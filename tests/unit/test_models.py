"""rlvr.models: the offline factory, local loading, the trained tokenizer and chat helpers."""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr import tasks
from rlvr.models import (
    CHAT_TEMPLATE,
    DEFAULT_VOCAB_SIZE,
    PRESETS,
    ModelLoadError,
    batch_prompt_ids,
    count_params,
    decode_completion,
    eos_token_ids,
    init_model,
    load_model,
    load_tokenizer,
    prompt_ids,
    task_corpus,
    train_tokenizer,
)
from rlvr.models.factory import CORPUS_SEED, model_config, random_model
from rlvr.models.tokenizer import render_chatml

CORPUS_SIZE = 35  # 5 puzzles per KK size: enough for every frequent word, fast to build


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model(tmp_path_factory.mktemp("models") / "tiny", seed=0, n_per_task=CORPUS_SIZE)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path):
    return load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def kk():
    return tasks.get("knights_knaves")


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# -- the factory -------------------------------------------------------------------------------


def test_init_writes_a_directory_transformers_loads(tiny_dir: Path, kk) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(
        _files(tiny_dir)
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_dir, local_files_only=True)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.vocab_size == len(tok)
    assert (
        tok.chat_template is not None and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    )
    ids = prompt_ids(tok, kk.messages(kk.examples(1, seed=3)[0]), kk.response_prefix)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_same_seed_gives_byte_identical_files(tiny_dir: Path, tmp_path: Path) -> None:
    again = init_model(tmp_path / "again", seed=0, n_per_task=CORPUS_SIZE)
    assert _files(again) == _files(tiny_dir)


def test_other_seed_changes_weights_not_tokenizer(tiny_dir: Path, tmp_path: Path) -> None:
    other = init_model(tmp_path / "other", seed=1, n_per_task=CORPUS_SIZE)
    assert (other / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    a, b = load_model(tiny_dir).state_dict(), load_model(other).state_dict()
    assert a.keys() == b.keys()
    assert not torch.equal(
        a["model.layers.0.self_attn.q_proj.weight"], b["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(a["model.norm.weight"], b["model.norm.weight"])  # ones in both


def test_provenance_file(tiny_dir: Path, tokenizer) -> None:
    info = json.loads((tiny_dir / "rlvr_model.json").read_text())
    assert info["preset"] == "tiny" and info["seed"] == 0 and info["tasks"] == ["knights_knaves"]
    assert info["vocab_size"] == len(tokenizer)
    assert info["params"] == count_params(PRESETS["tiny"], len(tokenizer))


@pytest.mark.parametrize("name, low, high", [("tiny", 1e6, 5e6), ("mini", 2e6, 1e7), ("small", 2e7, 5e7)])
def test_preset_param_counts(name: str, low: float, high: float) -> None:
    preset = PRESETS[name]
    assert low <= preset.params <= high
    assert preset.description
    config = model_config(preset, vocab_size=777, pad_id=0, eos_id=2)
    with torch.device("meta"):  # shapes only: counts a 32M model without allocating it
        from transformers import Qwen2ForCausalLM

        model = Qwen2ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == count_params(preset, 777)


def test_random_model_leaves_global_rng_alone() -> None:
    config = model_config(PRESETS["tiny"], vocab_size=300, pad_id=0, eos_id=2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = random_model(config, seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = random_model(config, seed=5)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    std = a.model.layers[0].mlp.up_proj.weight.std().item()
    assert abs(std - 0.02) < 0.002  # N(0, initializer_range)


def test_existing_different_directory_is_not_clobbered(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        init_model(out, seed=0, n_per_task=CORPUS_SIZE)
    assert _files(out) == {"notes.txt": b"mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary directory left behind

    assert init_model(out, seed=0, n_per_task=CORPUS_SIZE, overwrite=True) == out
    assert _files(out) == _files(tiny_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_identical_or_empty_existing_directory_is_fine(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    init_model(out, seed=0, n_per_task=CORPUS_SIZE)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    init_model(out, seed=0, n_per_task=CORPUS_SIZE)  # same arguments: kept as it is
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(FileExistsError, match="differs"):
        init_model(out, seed=1, n_per_task=CORPUS_SIZE)  # built, compared, refused
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]
    assert (out / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()


def test_init_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        init_model(tmp_path / "m", preset="huge")
    with pytest.raises(ValueError, match="unknown task"):
        init_model(tmp_path / "m", tasks=("knights_knaves_typo",), n_per_task=7)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        init_model(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_task_corpus_covers_every_kk_size() -> None:
    corpus = task_corpus(["knights_knaves"], seed=0, n_per_task=14)
    assert len(corpus) == 14
    answers = [text.rsplit("<answer>", 1)[1] for text in corpus]
    assert [a.count(" is a kn") for a in answers] == [p for p in range(2, 9) for _ in range(2)]
    for text in corpus:
        assert text.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n" in text
        assert text.endswith("</answer><|im_end|>") and "<think>" in text


def test_task_options_shape_the_tokenizer_corpus(tmp_path: Path) -> None:
    options = {"knights_knaves": {"system_prompt": "", "phrasing": "terse", "trace": "stepwise"}}
    corpus = task_corpus(["knights_knaves"], seed=0, n_per_task=14, task_options=options)
    assert all(text.startswith("<|im_start|>user\n") for text in corpus)  # no system message
    assert all(" so " in text and "A very special island" not in text for text in corpus)
    out = init_model(tmp_path / "m", seed=0, n_per_task=14, task_options=options)
    assert json.loads((out / "rlvr_model.json").read_text())["task_options"] == options
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.tokenize(" so iff") == ["Ġso", "Ġiff"]  # trace words learnt as whole tokens


def test_loaded_model_dtype_and_device(tiny_dir: Path) -> None:
    model = load_model(tiny_dir, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not model.training
    assert {p.dtype for p in load_model(tiny_dir, dtype="auto").parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(tiny_dir, dtype="fp8")


# -- loading errors ----------------------------------------------------------------------------


def test_loading_errors_name_the_problem(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="local directories only") as hub:
        load_model("Qwen/Qwen2.5-7B")
    assert "--local-dir" in str(hub.value)
    with pytest.raises(ModelLoadError, match="local directories only"):
        load_tokenizer("Qwen/Qwen2.5-7B")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="no tokenizer|no config.json"):
        load_tokenizer(tmp_path / "empty")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    with pytest.raises(ModelLoadError, match="no weights.*model.safetensors"):
        load_model(no_weights)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(tmp_path / "a_file")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no_such_architecture"}')
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="could not load the model"):
        load_model(broken)


def test_tokenizer_config_loads_in_transformers_4_too(tiny_dir: Path) -> None:
    """transformers 4.x knows neither "TokenizersBackend" nor a list of "extra_special_tokens"."""
    config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["additional_special_tokens"] == ["<|im_start|>"] and "extra_special_tokens" not in config


def test_tokenizer_only_directory_loads(tiny_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tmp_path / name).write_bytes((tiny_dir / name).read_bytes())
    assert load_tokenizer(tmp_path).chat_template == CHAT_TEMPLATE


# -- the tokenizer -----------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    "  leading and trailing  ",
    "Zoey is a knight.\n\n\tOliver  is a knave ,said Ethan .",
    "naïve café, Straße, 日本語の文, Ελληνικά, عربى, 🤖🧠 and a ZWJ 👩‍👩‍👧",
    "windows\r\nline\rends\n",
    "x^2 + 3.14159 = 1e-9 (42) [a, b] {c: d} $\\frac{1}{2}$ 100,000",
    "<think>\nZoey knight says true, ok.\n</think>\n<answer>\n(1) Zoey is a knight\n</answer>",
    "<thinking> </answer2> <think <answer",
    "\x00\x07 control bytes \ufffd",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokenizer_round_trip_is_exact(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert decode_completion(tokenizer, ids) == text


def test_tags_are_single_ordinary_tokens(tokenizer) -> None:
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        ids = tokenizer(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, tag
        assert tag not in tokenizer.all_special_tokens
    text = "<think>\nok\n</think>\n<answer>\n(1) Ava is a knave\n</answer>"
    ids = tokenizer(text + "<|im_end|><|endoftext|>", add_special_tokens=False)["input_ids"]
    assert ids[-2:] == [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    assert decode_completion(tokenizer, ids) == text  # specials dropped, tags kept


def test_frequent_kk_words_are_single_tokens(tokenizer, kk) -> None:
    """Every pre-token piece of a KK trace (a word with its leading space, a punctuation run) is
    one token: the vocabulary is large enough for the corpus (see DEFAULT_VOCAB_SIZE)."""
    split = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str
    for example in kk.examples(5, seed=11, people=4):
        trace = kk.solution_trace(example)
        body = trace.split("<think>", 1)[1].split("</think>", 1)[0]
        assert len(tokenizer(body, add_special_tokens=False)["input_ids"]) == len(split(body))
    for word in (" knight", " knave", " says", " contradiction"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_round_trip_normalises_to_nfc(tokenizer) -> None:
    decomposed = "Cafe\u0301 and n\u0303"
    ids = tokenizer(decomposed, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", decomposed) == "Café and ñ"


def test_autotokenizer_matches_the_trained_tokenizer(tokenizer) -> None:
    """transformers loads qwen2 directories with Qwen2Tokenizer, which rebuilds the normalizer and
    pre-tokenizer from its own code: ours must be identical or ids would differ after loading."""
    trained = train_tokenizer(
        task_corpus(["knights_knaves"], seed=CORPUS_SEED, n_per_task=CORPUS_SIZE), DEFAULT_VOCAB_SIZE
    )
    assert trained.get_vocab() == tokenizer.get_vocab()
    for text in TRICKY + [render_chatml(MESSAGES, add_generation_prompt=True) + "<think>\n"]:
        assert (
            trained(text, add_special_tokens=False)["input_ids"]
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
    assert (
        trained.backend_tokenizer.normalizer.__getstate__()
        == tokenizer.backend_tokenizer.normalizer.__getstate__()
    )
    assert (
        trained.backend_tokenizer.pre_tokenizer.__getstate__()
        == tokenizer.backend_tokenizer.pre_tokenizer.__getstate__()
    )


def test_train_tokenizer_small_corpus_and_limits() -> None:
    texts = ["the cat sat on the mat. " * 3, "the dog sat on the log."] * 5
    tok = train_tokenizer(texts, vocab_size=280)
    assert len(tok) <= 280
    assert tok.decode(tok("the cat", add_special_tokens=False)["input_ids"]) == "the cat"
    with pytest.raises(ValueError, match="at least"):
        train_tokenizer(texts, vocab_size=100)


# -- chat helpers ------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is a knight?"}]


def test_chat_template_is_chatml(tokenizer) -> None:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho is a knight?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert text == render_chatml(MESSAGES, add_generation_prompt=True)
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False).endswith("<|im_end|>\n")


def test_prompt_ids_specials_are_single_ids_and_prefix_is_appended(tokenizer) -> None:
    ids = prompt_ids(tokenizer, MESSAGES, response_prefix="<think>\n")
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == im_start
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2
    assert ids[-2:] == tokenizer("<think>\n", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == render_chatml(MESSAGES, add_generation_prompt=True) + "<think>\n"
    assert prompt_ids(tokenizer, MESSAGES) == ids[:-2]
    batch = batch_prompt_ids(tokenizer, [MESSAGES, MESSAGES[1:]], "<think>\n")
    assert batch == [ids, prompt_ids(tokenizer, MESSAGES[1:], "<think>\n")]
    assert batch_prompt_ids(tokenizer, [], "") == []


def test_prompt_needs_a_chat_template() -> None:
    bare = train_tokenizer(["a b c a b c"], vocab_size=270)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        prompt_ids(bare, MESSAGES)


def test_eos_token_ids(tiny_dir: Path, tokenizer) -> None:
    im_end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert eos_token_ids(tokenizer) == (im_end, eot)
    assert eos_token_ids(tokenizer, tiny_dir) == (im_end, eot)
    model = load_model(tiny_dir)
    assert eos_token_ids(tokenizer, model) == (im_end, eot)
    assert eos_token_ids(tokenizer, model.config) == (im_end, eot)

    class Config:
        eos_token_id = [7, im_end, 9]

    assert eos_token_ids(tokenizer, Config()) == (im_end, eot, 7, 9)


def test_corpus_split_is_even_over_levels() -> None:
    assert len(task_corpus(["knights_knaves"], seed=0, n_per_task=8)) == 7 * math.ceil(8 / 7)


def test_load_tokenizer_gives_a_pad_when_the_checkpoint_has_none(tmp_path: Path) -> None:
    tok = train_tokenizer(["a b c a b c"], vocab_size=270)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).pad_token == "<|im_end|>"
