"""A modded-nanogpt-style GPT whose weights live in a few "parameter banks".

Layout (the optimizer's table names in quotes):
  "attn"     (L, 4d, d)            per layer the rows [Q; K; V; O], each (d, d)
  "mlp"      (L_pad, 2, h, d)      per layer [fc (h, d), proj stored transposed (h, d)];
                                   L_pad >= L so the 2*L_pad matrices shard evenly over ranks,
                                   the padded layers are never used by forward
  "embed"    (vocab, d)            token embedding
  "lm_head"  (d, vocab)            stored transposed; tied to embed by the optimizer, by hand
  "ve0".."ve{n-1}" (vocab, d)      value embeddings added to the attention values of the first
                                   and last layers
  "scalars"  (4L,)                 per layer: 2 residual lambdas, 2 value-embedding lambdas

The per-layer weights come out of the banks in one of two ways (config.bank_access):
  "unbind": bank.unbind(0) once, before the layer loop. Its backward stacks the per-layer
            gradients in one kernel.
  "index":  bank[i] inside the layer loop. In eager PyTorch every index becomes an
            aten::select whose backward (aten::select_backward) zero-fills a whole
            bank-sized gradient and copies one slice in: L full-bank fills per bank per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.config import Config


def rms_norm(x: Tensor) -> Tensor:
    """RMSNorm without a weight (modded-nanogpt): the lambdas and matrices carry the scale."""
    return F.rms_norm(x, (x.size(-1),))


def padded_mlp_layers(num_layers: int, world_size: int) -> int:
    """Smallest L_pad >= num_layers such that the 2 * L_pad MLP matrices divide by world_size."""
    step = world_size // math.gcd(2, world_size)
    return -(-num_layers // step) * step


def value_embed_layers(num_layers: int, num_value_embeds: int) -> list[int | None]:
    """Which value embedding each layer adds to its values: ve0..ve{n-1} on the first n layers
    and again on the last n (where those are not the first ones), None elsewhere."""
    layers: list[int | None] = [None] * num_layers
    for j in range(num_value_embeds):
        layers[j] = j
        last = num_layers - num_value_embeds + j
        if last >= num_value_embeds:
            layers[last] = j
    return layers


def param_shapes(config: Config, world_size: int = 1) -> dict[str, tuple[int, ...]]:
    """The shapes of GPT(config, world_size).param_table(), without allocating the weights
    (the launcher checks them against the world size before any rank starts)."""
    L, d, V = config.num_layers, config.model_dim, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "attn": (L, 4 * d, d),
        "mlp": (padded_mlp_layers(L, world_size), 2, config.mlp_mult * d, d),
        "scalars": (4 * L,),
    }
    shapes.update({f"ve{i}": (V, d) for i in range(config.num_value_embeds)})
    shapes.update({"lm_head": (d, V), "embed": (V, d)})
    return shapes


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin, each (seq_len, head_dim // 2), float32."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, T, H, hd) queries or keys by position; cos/sin are (T, hd/2)."""
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def attention(x: Tensor, qkvo: Tensor, num_heads: int, cos: Tensor, sin: Tensor,
              value_embed: Tensor | None, ve_lambdas: tuple[Tensor, Tensor]) -> Tensor:
    """Causal self-attention with QK-norm and rotary embeddings; qkvo is one layer's (4d, d)."""
    B, T, d = x.shape
    w_qkv, w_o = qkvo.split((3 * d, d))
    q, k, v = F.linear(x, w_qkv).view(B, T, 3, num_heads, d // num_heads).unbind(2)
    q, k = apply_rotary(rms_norm(q), cos, sin), apply_rotary(rms_norm(k), cos, sin)
    if value_embed is not None:
        v = (ve_lambdas[0] * v + ve_lambdas[1] * value_embed.view_as(v)).to(q.dtype)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=True)
    return F.linear(y.transpose(1, 2).reshape(B, T, d), w_o)


def relu2_mlp(x: Tensor, mlp: Tensor) -> Tensor:
    """ReLU^2 MLP; mlp is one layer's (2, h, d): fc as (h, d) and proj stored as (h, d)."""
    w_fc, w_proj = mlp.unbind(0)
    return F.relu(F.linear(x, w_fc)).square() @ w_proj


class GPT(nn.Module):
    def __init__(self, config: Config, world_size: int = 1) -> None:
        super().__init__()
        self.config = config
        self.index_banks = config.bank_access == "index"
        L, d, V = config.num_layers, config.model_dim, config.vocab_size
        hidden = config.mlp_mult * d
        self.mlp_layers_padded = padded_mlp_layers(L, world_size)
        self.ve_layers = value_embed_layers(L, config.num_value_embeds)

        # Deterministic init from the seed, on the CPU; the caller moves the model.
        gen = torch.Generator().manual_seed(config.seed)
        bound = math.sqrt(3) * 0.5 * d**-0.5  # uniform with std 0.5 / sqrt(d)

        def uniform(*shape: int) -> Tensor:
            return torch.empty(shape).uniform_(-bound, bound, generator=gen)

        attn = torch.zeros(L, 4 * d, d)
        attn[:, : 3 * d] = uniform(L, 3 * d, d)  # output projections start at zero
        self.attn = nn.Parameter(attn)
        mlp = torch.zeros(self.mlp_layers_padded, 2, hidden, d)
        mlp[:L, 0] = uniform(L, hidden, d)  # proj starts at zero, padding stays zero
        self.mlp = nn.Parameter(mlp)
        lm_head = torch.randn(d, V, generator=gen) * (0.5 * d**-0.5)
        self.lm_head = nn.Parameter(lm_head)
        self.embed = nn.Parameter(lm_head.T.contiguous())  # tied: the optimizer keeps it so
        self.value_embeds = nn.ParameterList(
            [nn.Parameter(torch.randn(V, d, generator=gen) * 0.5)
             for _ in range(config.num_value_embeds)])
        scalars = torch.tensor([1.0, 0.0, 0.5, 0.5]).repeat(L)  # x-lambda, x0-lambda, ve-lambdas
        self.scalars = nn.Parameter(scalars)

        cos, sin = rotary_tables(config.seq_len, config.head_dim)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)

    def param_table(self) -> dict[str, nn.Parameter]:
        """Parameters by the optimizer's table names (see trainer/optim.py PARAM_TABLE)."""
        table = {"attn": self.attn, "mlp": self.mlp, "scalars": self.scalars}
        table.update({f"ve{i}": p for i, p in enumerate(self.value_embeds)})
        table.update({"lm_head": self.lm_head, "embed": self.embed})
        return table

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 x matmul weights + attention.

        Matmul weights per layer: q, k, v, o (4 d^2) and the MLP (2 x mult x d^2), plus the LM
        head (d x vocab); padded MLP layers and embedding lookups cost nothing. Attention: the
        scores and the weighted sum are 4 T d forward FLOPs per token and layer, 12 T d with
        backward, halved by the causal mask.
        """
        cfg = self.config
        T = seq_len or cfg.seq_len
        d, L = cfg.model_dim, cfg.num_layers
        matmul_params = L * (4 * d * d + 2 * cfg.mlp_mult * d * d) + d * cfg.vocab_size
        attention_flops = 12 * L * d * T / 2  # causal: half the score matrix
        return 6 * matmul_params + attention_flops

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy (float32) of next-token logits against targets, both (B, T)."""
        cfg = self.config
        L, T = cfg.num_layers, idx.size(1)
        bf16 = idx.device.type == "cuda"  # bfloat16 activations on GPU, float32 on CPU
        with torch.autocast(idx.device.type, dtype=torch.bfloat16, enabled=bf16):
            x = x0 = rms_norm(F.embedding(idx, self.embed))
            value_embeds = [F.embedding(idx, table) for table in self.value_embeds]
            cos, sin = self.rotary_cos[:T], self.rotary_sin[:T]
            scalars = self.scalars.unbind(0)  # 0-d views; indexing the tuple costs nothing
            if not self.index_banks:
                attn_layers, mlp_layers = self.attn.unbind(0), self.mlp.unbind(0)
            for i in range(L):
                if self.index_banks:
                    qkvo, mlp = self.attn[i], self.mlp[i]  # select -> select_backward per layer
                else:
                    qkvo, mlp = attn_layers[i], mlp_layers[i]
                x_lambda, x0_lambda, ve_a, ve_b = scalars[4 * i: 4 * i + 4]
                ve_index = self.ve_layers[i]
                ve = value_embeds[ve_index] if ve_index is not None else None
                x = x_lambda * x + x0_lambda * x0
                x = x + attention(rms_norm(x), qkvo, cfg.num_heads, cos, sin, ve, (ve_a, ve_b))
                x = x + relu2_mlp(rms_norm(x), mlp)
            logits = (rms_norm(x) @ self.lm_head).float()
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
