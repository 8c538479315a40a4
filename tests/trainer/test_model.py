"""The banked GPT: shapes, determinism, and that both bank access modes compute the same thing
while only `index` produces select_backward."""

from __future__ import annotations

import torch

from trainer.config import make_config
from trainer.model import GPT, padded_mlp_layers, value_embed_layers


def _batch(vocab: int, batch: int = 2, seq: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))


def _randomize(model: GPT, seed: int = 1) -> None:
    """Give the zero-initialised output projections values, so every weight gets a gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def test_param_table_shapes_and_padding() -> None:
    cfg = make_config("tiny", num_layers=3, num_value_embeds=2)
    model = GPT(cfg, world_size=4)
    d, V, h = cfg.model_dim, cfg.vocab_size, cfg.mlp_mult * cfg.model_dim
    shapes = {name: tuple(p.shape) for name, p in model.param_table().items()}
    assert shapes == {"attn": (3, 4 * d, d), "mlp": (4, 2, h, d), "scalars": (12,),
                      "ve0": (V, d), "ve1": (V, d), "lm_head": (d, V), "embed": (V, d)}
    table_ids = {id(p) for p in model.param_table().values()}
    assert table_ids == {id(p) for p in model.parameters()}
    assert torch.equal(model.embed, model.lm_head.T)


def test_padding_and_value_embed_layout() -> None:
    assert padded_mlp_layers(12, 8) == 12
    assert padded_mlp_layers(11, 8) == 12
    assert padded_mlp_layers(3, 4) == 4
    assert padded_mlp_layers(3, 2) == 3
    assert padded_mlp_layers(5, 1) == 5
    assert value_embed_layers(12, 3) == [0, 1, 2] + [None] * 6 + [0, 1, 2]
    assert value_embed_layers(2, 2) == [0, 1]
    assert value_embed_layers(3, 2) == [0, 1, 1]


def test_init_is_deterministic_from_seed() -> None:
    a, b = GPT(make_config("tiny")), GPT(make_config("tiny"))
    c = GPT(make_config("tiny", seed=7))
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(),
                                  strict=True):
        assert torch.equal(pa, pb), name
        if pa.abs().sum() > 0 and name != "scalars":
            assert not torch.equal(pa, pc), name


def test_forward_is_float32_scalar_near_uniform() -> None:
    cfg = make_config("tiny")
    data = _batch(cfg.vocab_size)
    loss = GPT(cfg)(data[:, :-1], data[:, 1:])
    assert loss.dim() == 0 and loss.dtype == torch.float32
    # Small init: logits are near zero, so the loss is near log(vocab).
    assert abs(loss.item() - torch.log(torch.tensor(float(cfg.vocab_size))).item()) < 0.5


def test_unbind_and_index_give_same_loss_and_grads() -> None:
    data = _batch(512)
    grads, losses = {}, {}
    for mode in ("unbind", "index"):
        model = GPT(make_config("tiny", bank_access=mode), world_size=4)
        _randomize(model)
        loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        losses[mode] = loss.item()
        grads[mode] = {n: p.grad.clone() for n, p in model.param_table().items()}
    assert losses["unbind"] == losses["index"]
    for name, grad in grads["unbind"].items():
        torch.testing.assert_close(grads["index"][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert grads["unbind"]["attn"].abs().sum() > 0
    # The padded MLP layers (4 for world size 4, 2 used) get no gradient.
    assert grads["unbind"]["mlp"][2:].abs().sum() == 0


def _op_names(mode: str) -> set[str]:
    cfg = make_config("tiny", bank_access=mode)
    model = GPT(cfg)
    data = _batch(cfg.vocab_size, seq=16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(data[:, :-1], data[:, 1:]).backward()
    return {event.key for event in prof.key_averages()}


def test_only_index_access_launches_select_backward() -> None:
    assert "aten::select_backward" in _op_names("index")
    assert "aten::select_backward" not in _op_names("unbind")


def test_flops_per_token_counts_used_matmuls_and_causal_attention() -> None:
    """6 x the matmul weights forward really uses (not the padded MLP layers, not the
    embedding tables) + 6 L T d for causal attention (half of 12 L T d)."""
    cfg = make_config("tiny", num_layers=3)
    model = GPT(cfg, world_size=4)  # 4 MLP layers in the bank, 3 used
    table = model.param_table()
    used_mlp = table["mlp"][: cfg.num_layers].numel()
    matmul_weights = table["attn"].numel() + used_mlp + table["lm_head"].numel()
    L, d = cfg.num_layers, cfg.model_dim
    for seq_len in (cfg.seq_len, 64):
        expected = 6 * matmul_weights + 6 * L * seq_len * d
        assert model.flops_per_token(seq_len) == expected
