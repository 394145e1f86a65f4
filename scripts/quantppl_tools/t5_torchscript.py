"""A TorchScript-scriptable T5 encoder-decoder in plain torch (no transformers needed).

It reproduces Hugging Face's ``T5ForConditionalGeneration`` forward pass (inference, no
dropout, no cache) so that an HF state dict loads with ``load_state_dict`` and the scripted
module returns the same logits. The module paths mirror HF's parameter names
(``encoder.block.0.layer.0.SelfAttention.q``, ``decoder.block.3.layer.2.DenseReluDense.wo``,
``lm_head``) because quantppl selects the Linear layers to quantize by those names.

The math, as in HF's modeling_t5.py (transformers 4.46):
  * RMS layer norm: y = w * x / sqrt(mean(x^2) + eps), the mean of squares computed in fp32;
    no bias and no mean subtraction.
  * Attention: scores = Q K^T + position_bias + mask, NO 1/sqrt(d_kv) scaling (T5 folds it into
    the initialisation of Q); softmax in fp32; output = o(softmax(scores) V).
  * Relative position bias: a learned table [num_buckets, num_heads] only in block 0 of each
    stack; the resulting [1, H, Tq, Tk] bias (mask already added) is reused by every later
    block of the same stack. Buckets are bidirectional in the encoder and causal (only the past)
    in the decoder; half of the buckets are exact offsets, the rest are log-spaced up to
    max_distance. Cross-attention has no position bias (zeros + encoder padding mask).
  * Masks are additive: 0 where attention is allowed, float32 min where it is not (HF uses
    torch.finfo(dtype).min, not -inf). torch.finfo is not scriptable in torch 1.13, so the
    value is stored as a plain float attribute.
  * Feed-forward: "relu"  : wo(relu(wi(x)))
                  "gated-gelu": wo(gelu_tanh(wi_0(x)) * wi_1(x)), gelu_tanh as HF's
                  NewGELUActivation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    Each sub-layer is pre-norm with a residual: h = h + f(layer_norm(h)).
  * Output: final RMS norm of the decoder, then lm_head. With tied embeddings (T5 v1.0) HF
    rescales the decoder output by d_model**-0.5 before the (tied) projection.

Tied lm_head: the exported lm_head is its own nn.Linear holding a copy of the embedding matrix,
so that quantizing the output projection in place never silently quantizes the input embedding
(the logits are identical; the file is one V x d_model matrix larger).
"""

import math
from typing import Dict, List

import torch
from torch import Tensor, nn

# The additive mask value HF uses for float32 (torch.finfo(torch.float32).min).
FLOAT32_MIN = float(torch.finfo(torch.float32).min)

# Activation codes (TorchScript constants).
ACT_RELU = 0
ACT_GELU_NEW = 1  # tanh approximation (HF "gelu_new", used by "gated-gelu")
ACT_GELU = 2      # exact erf GELU (HF "gelu", used by a non-gated "gelu")


def parse_feed_forward_proj(ff: str):
    """HF's rule: "gated-ACT" -> gated, ACT; "ACT" -> not gated. gated-gelu means gelu_new."""
    parts = ff.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    act = parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError("feed_forward_proj %r is not 'ACT' or 'gated-ACT'" % ff)
    if act == "relu":
        code = ACT_RELU
    elif act == "gelu":
        code = ACT_GELU_NEW if gated else ACT_GELU
    elif act in ("gelu_new", "gelu_pytorch_tanh"):
        code = ACT_GELU_NEW
    else:
        raise ValueError("feed_forward_proj %r: activation %r is not supported (relu, gelu)" % (ff, act))
    return gated, code


class T5LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.variance_epsilon = eps

    def forward(self, hidden: Tensor) -> Tensor:
        # RMS norm, variance (mean of squares) in fp32, no mean subtraction, no bias.
        variance = hidden.to(torch.float32).pow(2).mean(-1, keepdim=True)
        hidden = hidden * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden


class T5Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d) scaling; position_bias already holds the mask."""

    def __init__(self, d_model: int, d_kv: int, n_heads: int, has_relative_attention_bias: bool,
                 num_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        inner = n_heads * d_kv
        self.n_heads = n_heads
        self.d_kv = d_kv
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, n_heads)

    def _shape(self, x: Tensor) -> Tensor:
        # [B, L, H*d] -> [B, H, L, d]
        b = x.size(0)
        return x.view(b, -1, self.n_heads, self.d_kv).transpose(1, 2)

    def forward(self, hidden: Tensor, key_value: Tensor, position_bias: Tensor) -> Tensor:
        b = hidden.size(0)
        q = self._shape(self.q(hidden))
        k = self._shape(self.k(key_value))
        v = self._shape(self.v(key_value))
        scores = torch.matmul(q, k.transpose(3, 2))  # no 1/sqrt(d_kv): T5 convention
        scores = scores + position_bias
        weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.matmul(weights, v)  # [B, H, Lq, d]
        out = out.transpose(1, 2).contiguous().view(b, -1, self.n_heads * self.d_kv)
        return self.o(out)


def relative_position_bucket(relative_position: Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Tensor:
    """T5's bucketing of (key position - query position), as HF's _relative_position_bucket.

    Bidirectional: half the buckets for keys after the query, half for keys before.
    Unidirectional (decoder): only the past, future offsets map to bucket 0 (they are masked).
    Within each half, offsets < max_exact = n/2 get their own bucket; larger ones are
    log-spaced: max_exact + log(r / max_exact) / log(max_distance / max_exact) * (n - max_exact),
    capped at n - 1.
    """
    relative_buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets = num_buckets // 2
        relative_buckets = relative_buckets + (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    # log(0) = -inf for offset 0 is harmless: torch.where picks the exact bucket there.
    if_large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    if_large = torch.min(if_large, torch.full_like(if_large, num_buckets - 1))
    return relative_buckets + torch.where(is_small, relative_position, if_large)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: Dict, has_bias: bool, bidirectional: bool):
        super().__init__()
        self.SelfAttention = T5Attention(cfg["d_model"], cfg["d_kv"], cfg["num_heads"], has_bias,
                                         cfg["relative_attention_num_buckets"],
                                         cfg["relative_attention_max_distance"], bidirectional)
        self.layer_norm = T5LayerNorm(cfg["d_model"], cfg["layer_norm_epsilon"])

    def forward(self, hidden: Tensor, position_bias: Tensor) -> Tensor:
        normed = self.layer_norm(hidden)
        return hidden + self.SelfAttention(normed, normed, position_bias)


class T5LayerCrossAttention(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.EncDecAttention = T5Attention(cfg["d_model"], cfg["d_kv"], cfg["num_heads"], False,
                                           cfg["relative_attention_num_buckets"],
                                           cfg["relative_attention_max_distance"], True)
        self.layer_norm = T5LayerNorm(cfg["d_model"], cfg["layer_norm_epsilon"])

    def forward(self, hidden: Tensor, encoder_hidden: Tensor, cross_bias: Tensor) -> Tensor:
        normed = self.layer_norm(hidden)
        return hidden + self.EncDecAttention(normed, encoder_hidden, cross_bias)


class T5DenseReluDense(nn.Module):
    """Non-gated FFN: wo(act(wi(x)))."""

    def __init__(self, d_model: int, d_ff: int, act: int):
        super().__init__()
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(_activation(self.wi(x), self.act))


class T5DenseGatedActDense(nn.Module):
    """Gated FFN: wo(act(wi_0(x)) * wi_1(x))."""

    def __init__(self, d_model: int, d_ff: int, act: int):
        super().__init__()
        self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
        self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(_activation(self.wi_0(x), self.act) * self.wi_1(x))


def _activation(x: Tensor, act: int) -> Tensor:
    if act == 0:  # ACT_RELU
        return torch.relu(x)
    if act == 1:  # ACT_GELU_NEW, written exactly as HF's NewGELUActivation
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    return torch.nn.functional.gelu(x)  # ACT_GELU (erf)


class T5LayerFF(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        gated, act = parse_feed_forward_proj(cfg["feed_forward_proj"])
        if gated:
            self.DenseReluDense = T5DenseGatedActDense(cfg["d_model"], cfg["d_ff"], act)
        else:
            self.DenseReluDense = T5DenseReluDense(cfg["d_model"], cfg["d_ff"], act)
        self.layer_norm = T5LayerNorm(cfg["d_model"], cfg["layer_norm_epsilon"])

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden + self.DenseReluDense(self.layer_norm(hidden))


class T5EncoderBlock(nn.Module):
    def __init__(self, cfg: Dict, has_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(cfg, has_bias, True), T5LayerFF(cfg)])

    def forward(self, hidden: Tensor, position_bias: Tensor) -> Tensor:
        # Constant ModuleList indices: TorchScript resolves each to its own submodule type.
        hidden = self.layer[0](hidden, position_bias)
        return self.layer[1](hidden)


class T5DecoderBlock(nn.Module):
    def __init__(self, cfg: Dict, has_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(cfg, has_bias, False),
                                    T5LayerCrossAttention(cfg), T5LayerFF(cfg)])

    def forward(self, hidden: Tensor, self_bias: Tensor, encoder_hidden: Tensor,
                cross_bias: Tensor) -> Tensor:
        hidden = self.layer[0](hidden, self_bias)
        hidden = self.layer[1](hidden, encoder_hidden, cross_bias)
        return self.layer[2](hidden)


def _position_bias(table: Tensor, q_len: int, k_len: int, bidirectional: bool, num_buckets: int,
                   max_distance: int) -> Tensor:
    """[1, H, q_len, k_len] bias from the [num_buckets, H] table (HF's compute_bias)."""
    context = torch.arange(q_len, dtype=torch.long, device=table.device).unsqueeze(1)
    memory = torch.arange(k_len, dtype=torch.long, device=table.device).unsqueeze(0)
    buckets = relative_position_bucket(memory - context, bidirectional, num_buckets, max_distance)
    values = torch.nn.functional.embedding(buckets, table)  # [q, k, H]
    return values.permute(2, 0, 1).unsqueeze(0)


class T5EncoderStack(nn.Module):
    def __init__(self, cfg: Dict, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.block = nn.ModuleList([T5EncoderBlock(cfg, i == 0) for i in range(cfg["num_layers"])])
        self.final_layer_norm = T5LayerNorm(cfg["d_model"], cfg["layer_norm_epsilon"])
        self.num_buckets = int(cfg["relative_attention_num_buckets"])
        self.max_distance = int(cfg["relative_attention_max_distance"])
        self.mask_value = FLOAT32_MIN

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.embed_tokens(input_ids)
        s = input_ids.size(1)
        # Padding mask [B, 1, 1, S]: (1 - m) * float32_min, as HF's get_extended_attention_mask.
        ext = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * self.mask_value
        # Block 0 owns the relative position table; the masked bias is shared by all blocks.
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        bias = _position_bias(table, s, s, True, self.num_buckets, self.max_distance) + ext
        for blk in self.block:
            hidden = blk(hidden, bias)
        return self.final_layer_norm(hidden)


class T5DecoderStack(nn.Module):
    def __init__(self, cfg: Dict, embed_tokens: nn.Embedding):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.block = nn.ModuleList([T5DecoderBlock(cfg, i == 0) for i in range(cfg["num_decoder_layers"])])
        self.final_layer_norm = T5LayerNorm(cfg["d_model"], cfg["layer_norm_epsilon"])
        self.num_buckets = int(cfg["relative_attention_num_buckets"])
        self.max_distance = int(cfg["relative_attention_max_distance"])
        self.mask_value = FLOAT32_MIN

    def forward(self, decoder_input_ids: Tensor, encoder_hidden: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.embed_tokens(decoder_input_ids)
        t = decoder_input_ids.size(1)
        # Causal mask [1, 1, T, T]: float32_min strictly above the diagonal (future keys).
        causal = torch.triu(torch.ones(t, t, dtype=torch.float32, device=hidden.device), diagonal=1)
        causal = (causal * self.mask_value)[None, None, :, :]
        # Cross-attention: no position bias, only the encoder padding mask [B, 1, 1, S].
        cross = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * self.mask_value
        table = self.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        self_bias = _position_bias(table, t, t, False, self.num_buckets, self.max_distance) + causal
        for blk in self.block:
            hidden = blk(hidden, self_bias, encoder_hidden, cross)
        return self.final_layer_norm(hidden)


# Hyper-parameters read from an HF T5 config (config.json); defaults are HF's T5Config defaults.
CONFIG_DEFAULTS = {
    "vocab_size": 32128,
    "d_model": 512,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 6,
    "num_decoder_layers": None,  # None -> num_layers (HF rule)
    "num_heads": 8,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "relu",
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def normalize_config(raw: Dict) -> Dict:
    """Fill HF defaults and validate; raises ValueError naming the bad field."""
    cfg = {}
    for key, default in CONFIG_DEFAULTS.items():
        cfg[key] = raw.get(key, default)
    if cfg["num_decoder_layers"] is None:
        cfg["num_decoder_layers"] = cfg["num_layers"]
    if cfg["decoder_start_token_id"] is None:
        cfg["decoder_start_token_id"] = cfg["pad_token_id"]
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                "relative_attention_num_buckets", "relative_attention_max_distance"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError("config field %s must be a positive integer, got %r" % (key, v))
    for key in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
        v = cfg[key]
        if not isinstance(v, int) or not 0 <= v < cfg["vocab_size"]:
            raise ValueError("config field %s must be an integer in [0, vocab_size), got %r" % (key, v))
    if cfg["relative_attention_num_buckets"] < 4:
        raise ValueError("config field relative_attention_num_buckets must be >= 4")
    parse_feed_forward_proj(cfg["feed_forward_proj"])
    # transformers 5 splits the two traits of T5 v1.0 that tie_word_embeddings carried in 4.x: its
    # configs say tie_word_embeddings: true for every T5 (lm_head is the embedding unless the
    # checkpoint stores an lm_head of its own) and scale_decoder_outputs says whether the decoder
    # output is multiplied by d_model**-0.5. Here tie_word_embeddings keeps the 4.x meaning (v1.0:
    # scaled output, lm_head = embedding), so a model's metadata reads the same whichever
    # transformers saved it; lm_head_rule says where lm_head comes from, as each line loads it:
    #   "embedding"           4.x, tied: the embedding, even when the checkpoint stores an lm_head;
    #   "embedding_if_absent" 5.x: the checkpoint's lm_head if stored, else the embedding;
    #   "own"                 4.x, untied: the checkpoint's lm_head, which must be there.
    if raw.get("lm_head_rule") in ("embedding", "embedding_if_absent", "own"):  # normalized already
        cfg["tie_word_embeddings"] = bool(cfg["tie_word_embeddings"])
        cfg["lm_head_rule"] = raw["lm_head_rule"]
    elif "scale_decoder_outputs" in raw:
        cfg["tie_word_embeddings"] = bool(raw["scale_decoder_outputs"])
        cfg["lm_head_rule"] = "embedding_if_absent"
    else:
        cfg["tie_word_embeddings"] = bool(cfg["tie_word_embeddings"])
        cfg["lm_head_rule"] = "embedding" if cfg["tie_word_embeddings"] else "own"
    cfg["layer_norm_epsilon"] = float(cfg["layer_norm_epsilon"])
    return cfg


class T5ForLogits(nn.Module):
    """forward(input_ids, attention_mask, decoder_input_ids) -> float32 logits [B, T, V]."""

    def __init__(self, raw_config: Dict):
        super().__init__()
        cfg = normalize_config(raw_config)
        self.cfg = cfg  # plain dict of Python values; TorchScript ignores it (not used in forward)
        self.shared = nn.Embedding(cfg["vocab_size"], cfg["d_model"])
        # encoder.embed_tokens and decoder.embed_tokens are the same module as `shared` (HF ties
        # them); the scripted archive stores the tensor once.
        self.encoder = T5EncoderStack(cfg, self.shared)
        self.decoder = T5DecoderStack(cfg, self.shared)
        self.lm_head = nn.Linear(cfg["d_model"], cfg["vocab_size"], bias=False)
        self.tie_word_embeddings = cfg["tie_word_embeddings"]
        self.output_scale = float(cfg["d_model"]) ** -0.5

    def forward(self, input_ids: Tensor, attention_mask: Tensor, decoder_input_ids: Tensor) -> Tensor:
        encoder_hidden = self.encoder(input_ids, attention_mask)
        hidden = self.decoder(decoder_input_ids, encoder_hidden, attention_mask)
        if self.tie_word_embeddings:
            # HF T5 v1.0: rescale before the projection tied to the embedding.
            hidden = hidden * self.output_scale
        return self.lm_head(hidden)


# Keys that HF checkpoints may carry but HF's T5 itself does not use.
IGNORABLE_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
EMBEDDING_ALIASES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def load_hf_state_dict(model: T5ForLogits, state: Dict[str, Tensor]) -> List[str]:
    """Load an HF T5ForConditionalGeneration state dict strictly.

    Tied tensors may be stored under only one of their names (save_pretrained drops
    duplicates), so the embedding is taken from whichever alias is present, and a tied lm_head
    from the embedding. Every other key must match exactly. Returns notes about what was
    filled in or ignored; raises KeyError listing missing and unexpected keys otherwise.
    """
    state = dict(state)
    notes = []
    for key in IGNORABLE_KEYS:
        if key in state:
            del state[key]
            notes.append("ignored %s (unused by Hugging Face's T5 as well)" % key)
    present = [k for k in EMBEDDING_ALIASES if k in state]
    if present:
        emb = state[present[0]]
        for k in present[1:]:
            if not torch.equal(state[k], emb):
                raise KeyError("%s differs from %s: the embeddings are not tied" % (k, present[0]))
        for k in EMBEDDING_ALIASES:
            if k not in state:
                state[k] = emb
    rule = model.cfg["lm_head_rule"]
    lm_head_from_embedding = bool(present) and (rule == "embedding" or
                                                (rule == "embedding_if_absent" and "lm_head.weight" not in state))
    if "lm_head.weight" not in state and lm_head_from_embedding:
        state["lm_head.weight"] = state["shared.weight"]
        notes.append("lm_head.weight taken from the tied embedding")
    expected = set(model.state_dict().keys())
    missing = sorted(expected - set(state.keys()))
    unexpected = sorted(set(state.keys()) - expected)
    if missing or unexpected:
        raise KeyError("state dict does not match the config: missing keys %s; unexpected keys %s"
                       % (missing or "none", unexpected or "none"))
    for k, v in state.items():
        state[k] = v.to(torch.float32)
    model.load_state_dict(state, strict=True)
    if lm_head_from_embedding:
        # Independent copy so that quantizing lm_head in place leaves the embedding untouched.
        model.lm_head.weight = nn.Parameter(model.shared.weight.detach().clone())
    return notes
