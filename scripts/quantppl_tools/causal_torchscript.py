"""TorchScript-scriptable decoder-only language models in plain torch (no transformers needed).

Two families reproduce Hugging Face's forward passes (inference, no dropout, no cache):
  * LlamaForLogits: ``LlamaForCausalLM`` (TinyLlama, Llama-2/3), ``MistralForCausalLM`` (v0.1,
    within its sliding window) and ``Qwen2ForCausalLM`` (q/k/v biases);
  * GPT2ForLogits: ``GPT2LMHeadModel``.
Module paths mirror HF's parameter names (``model.layers.0.self_attn.q_proj``,
``transformer.h.0.attn.c_attn``, ``lm_head``) because quantppl selects Linear layers by name.

forward(input_ids, attention_mask) -> logits, all B x S (int64) -> B x S x V (float32);
logits[b, i] score token i + 1. Padding is on the right (mask 1...1 0...0); position ids are
0..S-1 for every row, so a right-padded row's real tokens see exactly what they see unpadded.

The math, as in transformers 4.46 (modeling_llama.py, modeling_qwen2.py, modeling_gpt2.py):
  * Llama RMSNorm: y = w * x / sqrt(mean(x^2) + eps), statistics in fp32, no bias.
  * RoPE: inv_freq[j] = theta^(-2j/d) for j < d/2 (d = head_dim), adjusted once at export for
    rope_scaling "linear" (inv_freq / factor) or "llama3" (wavelength-dependent: see
    rope_inv_freq); angle[p, j] = p * inv_freq[j]; cos/sin repeated over both halves; rotation
    x' = x * cos + rotate_half(x) * sin with rotate_half(x) = (-x[d/2:], x[:d/2]).
  * Attention: scores = Q K^T / sqrt(d) (GPT-2: / sqrt(d) as well, and / (layer + 1) when
    scale_attn_by_inverse_layer_idx), not allowed -> float32 min (HF's mask value, so a fully
    masked padding row is uniform rather than NaN); softmax in fp32; output o(softmax V).
    Allowed: key j <= query i and attention_mask[b, j] = 1. Grouped-query attention shares
    each K/V head among num_heads / num_key_value_heads consecutive query heads (HF repeat_kv).
  * Llama MLP (SwiGLU): down(silu(gate(x)) * up(x)). GPT-2 MLP: c_proj(gelu_new(c_fc(x))),
    gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  * Pre-norm residual blocks: h = h + attn(norm1(h)); h = h + mlp(norm2(h)); final norm; lm_head.
  * GPT-2's Conv1D stores W as [in, out] and computes x W + b: it becomes an nn.Linear with
    weight W^T. Learned absolute position embeddings (wpe) limit S to n_positions.

Tied lm_head (Qwen2-0.5B, GPT-2): the exported lm_head is its own nn.Linear holding a copy of the
embedding, so quantizing the output projection in place never changes the input embedding.
"""

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

# The mask value HF uses for float32 (torch.finfo(torch.float32).min); torch.finfo is not
# scriptable in torch 1.13, so it is a plain float.
FLOAT32_MIN = float(torch.finfo(torch.float32).min)

ACT_SILU = 0
ACT_GELU_NEW = 1  # tanh approximation (HF "gelu_new", "gelu_pytorch_tanh")
ACT_GELU = 2      # exact erf GELU
ACT_RELU = 3

_ACTIVATIONS = {"silu": ACT_SILU, "swish": ACT_SILU, "gelu_new": ACT_GELU_NEW, "gelu_pytorch_tanh": ACT_GELU_NEW,
                "gelu_fast": None, "gelu": ACT_GELU, "relu": ACT_RELU}


def activation_code(name: str) -> int:
    code = _ACTIVATIONS.get(name)
    if code is None:
        raise ValueError("activation %r is not supported (silu, gelu_new, gelu_pytorch_tanh, gelu, relu)" % name)
    return code


def _activation(x: Tensor, act: int) -> Tensor:
    # Literal codes: TorchScript cannot read module-level globals.
    if act == 0:  # ACT_SILU
        return torch.nn.functional.silu(x)
    if act == 1:  # ACT_GELU_NEW, written exactly as HF's NewGELUActivation
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    if act == 2:  # ACT_GELU (erf)
        return torch.nn.functional.gelu(x)
    return torch.relu(x)  # ACT_RELU


def allowed_mask(attention_mask: Tensor) -> Tensor:
    """bool [B, 1, S, S]: query i may attend to key j iff j <= i and attention_mask[b, j] == 1."""
    s = attention_mask.size(1)
    causal = torch.ones(s, s, dtype=torch.bool, device=attention_mask.device).tril()
    return causal.unsqueeze(0).unsqueeze(0) & (attention_mask != 0).unsqueeze(1).unsqueeze(2)


def check_inputs(input_ids: Tensor, attention_mask: Tensor):
    if input_ids.dim() != 2 or attention_mask.dim() != 2:
        raise ValueError("input_ids and attention_mask must be 2-D [batch, sequence]")
    if input_ids.size(0) != attention_mask.size(0) or input_ids.size(1) != attention_mask.size(1):
        raise ValueError("input_ids and attention_mask must have the same shape")
    if input_ids.size(0) < 1 or input_ids.size(1) < 1:
        raise ValueError("batch and sequence must be at least 1")


# ---------------------------------------------------------------------------------------------
# Llama / Mistral / Qwen2
# ---------------------------------------------------------------------------------------------

def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[Dict]) -> Tensor:
    """inv_freq as transformers 4.46 computes it (modeling_rope_utils.py), in float32.

    default: theta^(-(2j)/d). linear: divided by factor. llama3 (Llama-3.1): wavelengths
    2 pi / inv_freq longer than original_max_position_embeddings / low_freq_factor are divided
    by factor, shorter than .../high_freq_factor kept, and in between interpolated with
    smooth = (orig / wavelen - low) / (high - low): (1 - smooth) inv / factor + smooth inv."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen = old_ctx / low
        high_wavelen = old_ctx / high
        wavelen = 2 * math.pi / inv
        inv_llama = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
        is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(is_medium, smoothed, inv_llama)
    raise ValueError("rope_scaling type %r is not supported (none, linear, llama3)" % kind)


def rotate_half(x: Tensor) -> Tensor:
    half = x.size(-1) // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaRMSNorm(nn.Module):
    def __init__(self, n: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


class LlamaRotaryEmbedding(nn.Module):
    def __init__(self, inv_freq: Tensor):
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.clone())

    def forward(self, seq_len: int):
        """cos, sin of shape [S, head_dim] for positions 0..S-1."""
        pos = torch.arange(seq_len, dtype=torch.int64, device=self.inv_freq.device).float()
        # An outer product: one rounding per entry, as HF's [d/2 x 1] @ [1 x S] matmul.
        freqs = pos.unsqueeze(1) * self.inv_freq.unsqueeze(0)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


class LlamaAttention(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        h, d = cfg["hidden_size"], cfg["head_dim"]
        self.num_heads = cfg["num_attention_heads"]
        self.num_kv_heads = cfg["num_key_value_heads"]
        self.head_dim = d
        self.n_rep = self.num_heads // self.num_kv_heads
        self.scale = float(d) ** -0.5
        self.mask_value = FLOAT32_MIN
        self.q_proj = nn.Linear(h, self.num_heads * d, bias=cfg["qkv_bias"])
        self.k_proj = nn.Linear(h, self.num_kv_heads * d, bias=cfg["qkv_bias"])
        self.v_proj = nn.Linear(h, self.num_kv_heads * d, bias=cfg["qkv_bias"])
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=cfg["o_bias"])

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor) -> Tensor:
        b, s = x.size(0), x.size(1)
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.n_rep > 1:
            k = k.repeat_interleave(self.n_rep, dim=1)
            v = v.repeat_interleave(self.n_rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale
        scores = scores.masked_fill(~allowed, self.mask_value)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        h, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(h, f, bias=cfg["mlp_bias"])
        self.up_proj = nn.Linear(h, f, bias=cfg["mlp_bias"])
        self.down_proj = nn.Linear(f, h, bias=cfg["mlp_bias"])
        self.act = cfg["act"]

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(_activation(self.gate_proj(x), self.act) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = LlamaRMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = LlamaMLP(cfg)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor) -> Tensor:
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, allowed)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([LlamaDecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = LlamaRMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.rotary_emb = LlamaRotaryEmbedding(rope_inv_freq(cfg["head_dim"], cfg["rope_theta"], cfg["rope_scaling"]))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        h = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(input_ids.size(1))
        allowed = allowed_mask(attention_mask)
        for layer in self.layers:
            h = layer(h, cos, sin, allowed)
        return self.norm(h)


class LlamaForLogits(nn.Module):
    """forward(input_ids, attention_mask) -> float32 logits [B, S, V] (Llama, Mistral, Qwen2)."""

    def __init__(self, cfg: Dict):
        super().__init__()
        self.cfg = cfg  # plain dict; TorchScript ignores it
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        check_inputs(input_ids, attention_mask)
        return self.lm_head(self.model(input_ids, attention_mask))


# ---------------------------------------------------------------------------------------------
# GPT-2
# ---------------------------------------------------------------------------------------------

class GPT2Attention(nn.Module):
    def __init__(self, cfg: Dict, layer_idx: int):
        super().__init__()
        h = cfg["hidden_size"]
        self.num_heads = cfg["num_attention_heads"]
        self.head_dim = h // self.num_heads
        scale = 1.0
        if cfg["scale_attn_weights"]:
            scale = scale / math.sqrt(self.head_dim)
        if cfg["scale_attn_by_inverse_layer_idx"]:
            scale = scale / float(layer_idx + 1)
        self.scale = scale
        self.mask_value = FLOAT32_MIN
        self.c_attn = nn.Linear(h, 3 * h, bias=True)
        self.c_proj = nn.Linear(h, h, bias=True)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        b, s, h = x.size(0), x.size(1), x.size(2)
        qkv = self.c_attn(x)
        q = qkv[:, :, :h].reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = qkv[:, :, h:2 * h].reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        v = qkv[:, :, 2 * h:].reshape(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale
        scores = scores.masked_fill(~allowed, self.mask_value)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, h)
        return self.c_proj(out)


class GPT2MLP(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.c_fc = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"], bias=True)
        self.c_proj = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"], bias=True)
        self.act = cfg["act"]

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(_activation(self.c_fc(x), self.act))


class GPT2Block(nn.Module):
    def __init__(self, cfg: Dict, layer_idx: int):
        super().__init__()
        h, eps = cfg["hidden_size"], cfg["layer_norm_epsilon"]
        self.ln_1 = nn.LayerNorm(h, eps=eps)
        self.attn = GPT2Attention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(h, eps=eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, h: Tensor, allowed: Tensor) -> Tensor:
        h = h + self.attn(self.ln_1(h), allowed)
        return h + self.mlp(self.ln_2(h))


class GPT2Model(nn.Module):
    def __init__(self, cfg: Dict):
        super().__init__()
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.wpe = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])
        self.h = nn.ModuleList([GPT2Block(cfg, i) for i in range(cfg["num_hidden_layers"])])
        self.ln_f = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_epsilon"])
        self.n_positions = cfg["max_position_embeddings"]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        s = input_ids.size(1)
        if s > self.n_positions:
            raise ValueError("sequence longer than the model's learned positions (n_positions)")
        pos = torch.arange(s, dtype=torch.int64, device=input_ids.device)
        h = self.wte(input_ids) + self.wpe(pos).unsqueeze(0)
        allowed = allowed_mask(attention_mask)
        for block in self.h:
            h = block(h, allowed)
        return self.ln_f(h)


class GPT2ForLogits(nn.Module):
    """forward(input_ids, attention_mask) -> float32 logits [B, S, V] (GPT-2)."""

    def __init__(self, cfg: Dict):
        super().__init__()
        self.cfg = cfg
        self.transformer = GPT2Model(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        check_inputs(input_ids, attention_mask)
        return self.lm_head(self.transformer(input_ids, attention_mask))


# ---------------------------------------------------------------------------------------------
# Configs and state dicts
# ---------------------------------------------------------------------------------------------

LLAMA_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_TYPES = LLAMA_TYPES + ("gpt2",)


def _pos_int(raw: Dict, key: str, default=None) -> int:
    v = raw.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError("config field %s must be a positive integer, got %r" % (key, v))
    return v


def normalize_config(raw: Dict) -> Dict:
    """The architecture hyper-parameters of a HF config.json, HF defaults filled in; raises
    ValueError naming the field for anything this module cannot reproduce."""
    mt = raw.get("model_type")
    if mt not in SUPPORTED_TYPES:
        raise ValueError("model_type %r is not supported (t5, %s)" % (mt, ", ".join(SUPPORTED_TYPES)))
    cfg = {"model_type": mt}
    if mt == "gpt2":
        cfg["vocab_size"] = _pos_int(raw, "vocab_size", 50257)
        cfg["hidden_size"] = _pos_int(raw, "n_embd", 768)
        cfg["num_hidden_layers"] = _pos_int(raw, "n_layer", 12)
        cfg["num_attention_heads"] = _pos_int(raw, "n_head", 12)
        cfg["max_position_embeddings"] = _pos_int(raw, "n_positions", 1024)
        inner = raw.get("n_inner")
        cfg["intermediate_size"] = 4 * cfg["hidden_size"] if inner is None else _pos_int(raw, "n_inner")
        cfg["layer_norm_epsilon"] = float(raw.get("layer_norm_epsilon", 1e-5))
        cfg["activation_function"] = raw.get("activation_function", "gelu_new")
        cfg["act"] = activation_code(cfg["activation_function"])
        cfg["scale_attn_weights"] = bool(raw.get("scale_attn_weights", True))
        cfg["scale_attn_by_inverse_layer_idx"] = bool(raw.get("scale_attn_by_inverse_layer_idx", False))
        if raw.get("reorder_and_upcast_attn", False):
            # Only a numerical variant (fp32 upcast) of the same math; fp32 here anyway.
            pass
        cfg["tie_word_embeddings"] = bool(raw.get("tie_word_embeddings", True))
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ValueError("config: n_embd %d is not divisible by n_head %d"
                             % (cfg["hidden_size"], cfg["num_attention_heads"]))
        cfg["layers_prefix"] = "transformer.h"
        return cfg

    cfg["vocab_size"] = _pos_int(raw, "vocab_size")
    cfg["hidden_size"] = _pos_int(raw, "hidden_size")
    cfg["intermediate_size"] = _pos_int(raw, "intermediate_size")
    cfg["num_hidden_layers"] = _pos_int(raw, "num_hidden_layers")
    cfg["num_attention_heads"] = _pos_int(raw, "num_attention_heads")
    kv = raw.get("num_key_value_heads")
    cfg["num_key_value_heads"] = cfg["num_attention_heads"] if kv is None else _pos_int(raw, "num_key_value_heads")
    hd = raw.get("head_dim")
    if hd is None:
        if cfg["hidden_size"] % cfg["num_attention_heads"]:
            raise ValueError("config: hidden_size %d is not divisible by num_attention_heads %d"
                             % (cfg["hidden_size"], cfg["num_attention_heads"]))
        hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["head_dim"] = _pos_int({"head_dim": hd}, "head_dim")
    if cfg["head_dim"] % 2:
        raise ValueError("config: head_dim %d must be even for rotary embeddings" % cfg["head_dim"])
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        raise ValueError("config: num_attention_heads %d is not a multiple of num_key_value_heads %d"
                         % (cfg["num_attention_heads"], cfg["num_key_value_heads"]))
    cfg["max_position_embeddings"] = _pos_int(raw, "max_position_embeddings", 2048)
    cfg["rms_norm_eps"] = float(raw.get("rms_norm_eps", 1e-6))
    cfg["rope_theta"] = float(raw.get("rope_theta", 10000.0))
    scaling = raw.get("rope_scaling")
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise ValueError("config field rope_scaling must be an object or null, got %r" % (scaling,))
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("default", "linear", "llama3"):
            raise ValueError("rope_scaling %r is not supported (supported: none, linear, llama3)" % (scaling,))
        need = {"linear": ("factor",),
                "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
                "default": ()}[kind]
        for k in need:
            if not isinstance(scaling.get(k), (int, float)) or isinstance(scaling.get(k), bool):
                raise ValueError("rope_scaling %r: field %s must be a number" % (scaling, k))
        scaling = {k: scaling[k] for k in ("rope_type",) + need if k in scaling} if "rope_type" in scaling \
            else dict({k: scaling[k] for k in need}, rope_type=kind)
    cfg["rope_scaling"] = scaling
    cfg["hidden_act"] = raw.get("hidden_act", "silu")
    cfg["act"] = activation_code(cfg["hidden_act"])
    if mt == "qwen2":
        cfg["qkv_bias"], cfg["o_bias"], cfg["mlp_bias"] = True, False, False
    else:
        ab = bool(raw.get("attention_bias", False))
        cfg["qkv_bias"], cfg["o_bias"] = ab, ab
        cfg["mlp_bias"] = bool(raw.get("mlp_bias", False))
    cfg["tie_word_embeddings"] = bool(raw.get("tie_word_embeddings", mt == "qwen2" and False))
    # Attention beyond a sliding window is not reproduced: the exporter refuses max_length past it.
    window = None
    if mt == "mistral":
        window = raw.get("sliding_window", 4096)
    elif mt == "qwen2" and raw.get("use_sliding_window", False):
        window = raw.get("sliding_window", 4096)
    cfg["sliding_window"] = window
    cfg["layers_prefix"] = "model.layers"
    return cfg


def build_module(cfg: Dict, init: bool = True) -> nn.Module:
    """The module for `cfg`. init=False skips the random initialisation of Linear, Embedding and
    LayerNorm parameters (uninitialised memory): for a module whose every parameter is loaded
    next, where kaiming init of a billion weights would only cost time."""
    cls = GPT2ForLogits if cfg["model_type"] == "gpt2" else LlamaForLogits
    if init:
        return cls(cfg)
    saved = [(c, c.reset_parameters) for c in (nn.Linear, nn.Embedding, nn.LayerNorm)]
    try:
        for c, _ in saved:
            c.reset_parameters = lambda self: None
        return cls(cfg)
    finally:
        for c, f in saved:
            c.reset_parameters = f


# GPT-2's Conv1D layers ([in, out] weights), by name suffix.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_hf_state_dict(model: nn.Module, state: Dict[str, Tensor]) -> List[str]:
    """Load a HF LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM / GPT2LMHeadModel
    state dict strictly into `model` (converted to float32). A missing lm_head.weight is copied
    from the tied embedding; rotary inv_freq and GPT-2's causal-mask buffers (attn.bias,
    attn.masked_bias) are ignored; GPT-2 keys without the "transformer." prefix (the original
    openai checkpoints) are accepted; Conv1D weights are transposed. Every other key must match
    exactly. Consumes `state`: each tensor is released once copied, so a checkpoint and the
    float32 module are never both whole in memory (a 7 B model would need twice its size).
    Returns notes; raises KeyError on missing / unexpected keys, RuntimeError on a wrong shape."""
    cfg = model.cfg
    gpt2 = cfg["model_type"] == "gpt2"
    emb_key = "transformer.wte.weight" if gpt2 else "model.embed_tokens.weight"
    notes = []
    ignored = []
    names = {}  # our parameter name -> the checkpoint's key
    for k in list(state.keys()):
        ours = k
        if gpt2 and not k.startswith("transformer.") and k != "lm_head.weight":
            ours = "transformer." + k
        if ours.endswith("rotary_emb.inv_freq") or (gpt2 and (ours.endswith(".attn.bias")
                                                             or ours.endswith(".attn.masked_bias"))):
            ignored.append(k)
            del state[k]
            continue
        names[ours] = k
    if ignored:
        notes.append("ignored %d buffer(s) that hold no weights (%s, ...)" % (len(ignored), ignored[0]))
    tied_from = None
    if "lm_head.weight" not in names:
        if emb_key in names and cfg["tie_word_embeddings"]:
            tied_from = emb_key
            notes.append("lm_head.weight is a copy of the tied embedding %s" % emb_key)
    elif cfg["tie_word_embeddings"] and emb_key in names and \
            not torch.equal(state[names["lm_head.weight"]], state[names[emb_key]]):
        raise KeyError("tie_word_embeddings is true but lm_head.weight differs from %s" % emb_key)
    # The rotary inverse frequencies are computed from config.json, never read from the checkpoint.
    targets = {k: t for k, t in list(model.named_parameters()) + list(model.named_buffers())
               if not k.endswith("rotary_emb.inv_freq")}
    have = set(names) | ({"lm_head.weight"} if tied_from else set())
    missing = sorted(set(targets) - have)
    unexpected = sorted(have - set(targets))
    if missing or unexpected:
        raise KeyError("state dict does not match the config: missing keys %s; unexpected keys %s"
                       % (missing[:8] or "none", unexpected[:8] or "none"))

    def checkpoint_tensor(ours: str) -> Tensor:
        v = state[names[ours]]
        if gpt2 and ours.endswith(_CONV1D_SUFFIXES):
            if v.dim() != 2:
                raise RuntimeError("%s: a Conv1D weight must be 2-D, got shape %s" % (ours, tuple(v.shape)))
            v = v.t()
        return v

    for ours in names:
        shape = tuple(checkpoint_tensor(ours).shape)
        if shape != tuple(targets[ours].shape):
            raise RuntimeError("%s has shape %s, config.json implies %s" % (ours, shape, tuple(targets[ours].shape)))
    with torch.no_grad():
        if tied_from is not None:
            # Its own storage: quantizing lm_head in place must leave the embedding untouched.
            targets["lm_head.weight"].copy_(checkpoint_tensor(tied_from))
        for ours in names:
            targets[ours].copy_(checkpoint_tensor(ours))  # copy_ converts bf16 / fp16 to float32
            del state[names[ours]]
    return notes
