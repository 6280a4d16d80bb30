"""NativeCausalLM reproduces transformers' Qwen2 / Llama causal LMs and round-trips HF checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from rlvr.models.native import (
    NativeCausalLM,
    _attend,
    _attend_matmul,
    is_supported,
    packed_attention_mask,
    packed_position_ids,
)

VOCAB = 61


def qwen2_config(**overrides) -> Qwen2Config:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        initializer_range=0.3,  # larger than HF's 0.02 so logits differ clearly between tokens
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    fields.update(overrides)
    return Qwen2Config(**fields)


def llama_config(**overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        initializer_range=0.3,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


CONFIGS = {
    "qwen2-tied-gqa-bias": lambda: qwen2_config(),
    "qwen2-untied-mha-bias": lambda: qwen2_config(num_key_value_heads=4, tie_word_embeddings=False),
    "llama-untied-gqa-nobias": lambda: llama_config(),
    "llama-tied-allbias-headdim": lambda: llama_config(
        tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=12, num_key_value_heads=2
    ),
}


def hf_model(config) -> torch.nn.Module:
    torch.manual_seed(0)
    cls = Qwen2ForCausalLM if config.model_type == "qwen2" else LlamaForCausalLM
    model = cls(config).eval()
    with torch.no_grad():  # random biases and norms, so a wrong placement would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    return model


@pytest.fixture(params=sorted(CONFIGS))
def pair(request):
    hf = hf_model(CONFIGS[request.param]())
    return hf, NativeCausalLM.from_hf(hf).eval()


def test_state_dict_names_and_shapes_equal_hf(pair):
    hf, native = pair
    hf_state, own = hf.state_dict(), native.state_dict()
    assert sorted(own) == sorted(hf_state)
    assert all(own[k].shape == hf_state[k].shape for k in own)
    assert (native.lm_head.weight is native.model.embed_tokens.weight) == hf.config.tie_word_embeddings


def test_logits_equal_hf(pair):
    hf, native = pair
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 17))
    with torch.no_grad():
        expected = hf(ids).logits
        got = native(ids)
    assert got.shape == (3, 17, VOCAB)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gradients_equal_hf(pair):
    hf, native = pair
    torch.manual_seed(2)
    ids = torch.randint(1, VOCAB, (2, 9))
    hf(ids).logits.log_softmax(-1).mean().backward()
    native(ids).log_softmax(-1).mean().backward()
    hf_params = dict(hf.named_parameters())
    for name, p in native.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0 or name == "model.embed_tokens.weight", name
        torch.testing.assert_close(p.grad, hf_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_position_ids_restart_per_segment():
    seg = torch.tensor([[1, 1, 1, 2, 2, 0, 0], [3, 3, 3, 3, 3, 3, 3]])
    assert packed_position_ids(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]]
    mask = packed_attention_mask(seg)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False]
    assert mask[2].tolist() == [True, True, True, False, False, False, False]


def test_packed_forward_equals_separate_forwards(pair):
    _, native = pair
    torch.manual_seed(3)
    seqs = [torch.randint(1, VOCAB, (n,)) for n in (5, 7, 3)]
    packed = torch.cat(seqs + [torch.zeros(2, dtype=torch.long)])[None]  # 2 padding tokens at the end
    segment_ids = torch.tensor([[1] * 5 + [2] * 7 + [3] * 3 + [0] * 2])
    with torch.no_grad():
        logits = native(packed, segment_ids=segment_ids)[0]
        # explicit position ids give the same result as the derived ones
        explicit = native(packed, position_ids=packed_position_ids(segment_ids), segment_ids=segment_ids)[0]
        start = 0
        for seq in seqs:
            alone = native(seq[None])[0]
            torch.testing.assert_close(logits[start : start + len(seq)], alone, atol=1e-5, rtol=1e-5)
            start += len(seq)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(explicit, logits)


def test_completion_logits_share_prompts_and_equal_full_forwards(pair):
    """Prompts of different lengths, each continued by several completions of different lengths:
    logits on completion positions and every parameter gradient equal whole-sequence forwards."""
    _, native = pair
    torch.manual_seed(4)
    prompts = [torch.randint(1, VOCAB, (n,)) for n in (6, 3)]
    completions = [torch.randint(1, VOCAB, (n,)) for n in (4, 1, 5, 2)]
    owner = [0, 1, 0, 1]  # completion r continues prompts[owner[r]]
    prompt_ids = torch.zeros(2, 6, dtype=torch.long)
    completion_ids = torch.zeros(4, 5, dtype=torch.long)
    for i, p in enumerate(prompts):
        prompt_ids[i, : len(p)] = p
    for r, c in enumerate(completions):
        completion_ids[r, : len(c)] = c
    weights = torch.randn(4, 5, VOCAB)

    grouped = native.completion_logits(prompt_ids, torch.tensor([6, 3]), completion_ids, torch.tensor(owner))
    assert grouped.shape == (4, 5, VOCAB)
    loss = sum((grouped[r, : len(c)] * weights[r, : len(c)]).sum() for r, c in enumerate(completions))
    loss.backward()
    got_grads = {name: p.grad.clone() for name, p in native.named_parameters()}
    native.zero_grad()

    loss = 0.0
    for r, c in enumerate(completions):
        p = prompts[owner[r]]
        full = native(torch.cat([p, c])[None])[0]  # position t predicts token t + 1
        expected = full[len(p) - 1 : len(p) - 1 + len(c)]
        torch.testing.assert_close(grouped[r, : len(c)], expected, atol=1e-5, rtol=1e-5)
        loss = loss + (expected * weights[r, : len(c)]).sum()
    loss.backward()
    for name, p in native.named_parameters():
        torch.testing.assert_close(got_grads[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)
    assert torch.isfinite(grouped).all()  # padding positions too


def test_cached_decoding_equals_full_forward(pair):
    _, native = pair
    torch.manual_seed(4)
    seqs = [torch.randint(1, VOCAB, (n,)) for n in (12, 13, 15)]
    prompt_lens = [4, 6, 2]
    T = max(prompt_lens)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, (seq, n) in enumerate(zip(seqs, prompt_lens)):
        ids[i, T - n :], mask[i, T - n :] = seq[:n], 1
    steps = 6
    with torch.no_grad():
        full = [native(seq[None])[0] for seq in seqs]
        logits, cache = native.prefill(ids, mask, capacity=T + steps)
        for step in range(steps):
            for i, n in enumerate(prompt_lens):
                torch.testing.assert_close(logits[i], full[i][n - 1 + step], atol=1e-5, rtol=1e-5)
            next_ids = torch.stack([seq[n + step] for seq, n in zip(seqs, prompt_lens)])
            logits = native.decode_step(next_ids, cache)


def test_cache_select_repeats_and_drops_rows(pair):
    _, native = pair
    torch.manual_seed(5)
    a, b = torch.randint(1, VOCAB, (10,)), torch.randint(1, VOCAB, (10,))
    ids = torch.stack([a[:4], b[:4]])
    with torch.no_grad():
        full_a, full_b = native(a[None])[0], native(b[None])[0]
        _, cache = native.prefill(ids, capacity=10)
        rows = torch.tensor([0, 0, 1, 1, 1])  # 2 samples of a, 3 of b
        cache = cache.select(rows)
        logits = native.decode_step(torch.tensor([a[4], a[4], b[4], b[4], b[4]]), cache)
        for r, full in zip(range(5), [full_a, full_a, full_b, full_b, full_b]):
            torch.testing.assert_close(logits[r], full[4], atol=1e-5, rtol=1e-5)
        cache = cache.select(torch.tensor([1, 4]))  # keep one row of each prompt
        logits = native.decode_step(torch.tensor([a[5], b[5]]), cache)
        torch.testing.assert_close(logits, torch.stack([full_a[5], full_b[5]]), atol=1e-5, rtol=1e-5)


def test_decode_sees_weight_updates_between_prefills():
    native = NativeCausalLM.from_hf(hf_model(qwen2_config()))
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        native.prefill(ids)  # builds fused decode weights
        for i, p in enumerate(native.parameters()):
            if i % 2:
                p.mul_(1.1)  # in place, as an optimizer step
            else:
                p.data.mul_(0.9)  # through .data, which bypasses version counters
        _, cache = native.prefill(ids[:, :3], capacity=4)
        logits = native.decode_step(ids[:, 3], cache)
        torch.testing.assert_close(logits, native(ids)[:, 3], atol=1e-5, rtol=1e-5)


def test_save_pretrained_loads_in_transformers_and_back(pair, tmp_path):
    _, native = pair
    ids = torch.tensor([[5, 9, 2, 33, 7]])
    out = tmp_path / "ckpt"
    native.save_pretrained(out)
    native.save_pretrained(out)  # overwriting an existing checkpoint works too
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directories left
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    again = NativeCausalLM.from_pretrained(out)
    with torch.no_grad():
        expected = native(ids)
        torch.testing.assert_close(hf(ids).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again(ids), expected, atol=1e-5, rtol=1e-5)
    if native.config.tie_word_embeddings:
        assert again.lm_head.weight is again.model.embed_tokens.weight
    bf16 = NativeCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert bf16.lm_head.weight.dtype == torch.bfloat16


def test_bf16_decode_close_to_forward():
    native = NativeCausalLM.from_hf(hf_model(qwen2_config())).to(torch.bfloat16)
    ids = torch.tensor([[3, 14, 15, 9, 26, 5]])
    with torch.no_grad():
        full = native(ids).float()
        logits, cache = native.prefill(ids[:, :3], capacity=6)
        steps = [logits] + [native.decode_step(ids[:, t], cache) for t in range(3, 5)]
    for t, got in enumerate(steps):
        torch.testing.assert_close(got.float(), full[:, 2 + t], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("packed", [False, True])
def test_matmul_attention_equals_sdpa_with_gradients(packed):
    """The written-out attention (used for bf16 training on CPU) equals SDPA, values and gradients."""
    torch.manual_seed(4)
    q = torch.randn(2, 4, 9, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, 9, 8, requires_grad=True) for _ in range(2))
    mask = packed_attention_mask(torch.tensor([[1] * 4 + [2] * 5, [1] * 7 + [0] * 2])) if packed else None
    grads = []
    for attend in (lambda *a: _attend(*a, 0.0), _attend_matmul):
        out = attend(q, k, v, mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), *(t.grad.clone() for t in (q, k, v))))
        q.grad = k.grad = v.grad = None
    for sdpa, matmul in zip(*grads):
        torch.testing.assert_close(matmul, sdpa, atol=1e-5, rtol=1e-5)


def test_bf16_training_forward_and_gradients_close_to_fp32(pair):
    _, native = pair
    torch.manual_seed(5)
    ids = torch.randint(1, VOCAB, (1, 12))
    segment_ids = torch.tensor([[1] * 5 + [2] * 7])
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        native.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = native(ids, segment_ids=segment_ids).float()
        logits.log_softmax(-1).mean().backward()
        results.append((logits.detach(), native.lm_head.weight.grad.clone()))
    (fp32_logits, fp32_grad), (bf16_logits, bf16_grad) = results
    # bf16 keeps ~3 significant digits: compare against the scale of the logits (5-7 here)
    assert (bf16_logits - fp32_logits).abs().max() < 0.05 * fp32_logits.abs().max()
    assert torch.nn.functional.cosine_similarity(bf16_grad.flatten(), fp32_grad.flatten(), dim=0) > 0.99


def test_dict_config_and_refusals():
    native = NativeCausalLM({"model_type": "qwen2", "vocab_size": 50, "hidden_size": 16,
                             "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "num_key_value_heads": 1})
    assert native(torch.tensor([[1, 2, 3]])).shape == (1, 3, 50)
    assert is_supported(qwen2_config()) == (True, "ok")
    refused = {
        "rope": qwen2_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
        "window": qwen2_config(use_sliding_window=True, sliding_window=8, max_window_layers=0),
        "type": {"model_type": "gpt2"},
        "act": llama_config(hidden_act="gelu"),
    }
    for what, config in refused.items():
        ok, reason = is_supported(config)
        assert not ok and reason, what
    with pytest.raises(ValueError, match="cannot reproduce"):
        NativeCausalLM(refused["rope"])


def test_from_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        NativeCausalLM.from_pretrained(tmp_path)
    NativeCausalLM(qwen2_config()).save_pretrained(tmp_path / "a")
    wrong = qwen2_config(num_hidden_layers=3).to_dict()
    NativeCausalLM(qwen2_config(num_hidden_layers=3)).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "config.json").write_text((tmp_path / "b" / "config.json").read_text())
    assert wrong["num_hidden_layers"] == 3
    with pytest.raises(KeyError, match="model.layers.2"):
        NativeCausalLM.from_pretrained(tmp_path / "a")
