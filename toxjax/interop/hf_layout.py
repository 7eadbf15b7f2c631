"""Our Decoder's parameters <-> transformers' GPT-2 and Llama state dicts, and their configs.

Two architectures cover the configs toxjax trains (toxjax.model.decoder):
- GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, GELU, one key/value head per query
  head, head_dim * num_heads == d_model. Our `nn.gelu` is the tanh approximation, which is
  transformers' "gelu_new" (GPT-2's own). GPT-2 always has biases: a `use_bias=False` model is
  written with zero biases. Query/key/value are fused into `c_attn`, stored [in, out] (Conv1D).
- Llama (`LlamaForCausalLM`): RoPE, RMSNorm, SwiGLU, grouped-query attention, any head_dim;
  `use_bias` maps to both `attention_bias` and `mlp_bias`. Our RoPE rotates the two halves of
  each head (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) with frequencies theta^(-i/half),
  which is transformers' `rotate_half` layout, so no permutation of q/k rows is needed. Query
  head j reads key/value head j // (num_heads / num_kv_heads) in both (`repeat_kv`).
Linear layers are stored [out, in] (torch.nn.Linear); ours [in, ...heads..., out].

The embedding keeps all config.model.vocab_size rows (padding rows beyond the tokenizer's
ids included), so logits match ours id for id. Everything here is numpy on host arrays: the
exporter and the importer decide where the arrays come from and go to.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from toxjax.model import decoder

GPT2 = "gpt2"
LLAMA = "llama"
ARCHITECTURES = {GPT2: "GPT2LMHeadModel", LLAMA: "LlamaForCausalLM"}
# Field values each architecture implies (the rest come from its config).
_STYLE = {
    GPT2: {"positions": "learned", "norm": "layernorm", "activation": "gelu"},
    LLAMA: {"positions": "rope", "norm": "rmsnorm", "activation": "swiglu"},
}
# GELU activations equal to flax's nn.gelu (tanh approximation).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
Path = tuple[str, ...]


def architecture(cfg: decoder.ModelConfig) -> str:
    """GPT2 or LLAMA for a model config; ValueError naming what no architecture here covers."""
    matches = [
        name
        for name, style in _STYLE.items()
        if all(getattr(cfg, field) == value for field, value in style.items())
    ]
    if not matches:
        have = {field: getattr(cfg, field) for field in _STYLE[GPT2]}
        raise ValueError(
            f"config.model {have} has no transformers architecture here: GPT-2 needs "
            f"{_STYLE[GPT2]}, Llama needs {_STYLE[LLAMA]}"
        )
    name = matches[0]
    if name == GPT2:
        problems = []
        if cfg.num_kv_heads != cfg.num_heads:
            problems.append(f"num_kv_heads={cfg.num_kv_heads} != num_heads={cfg.num_heads}")
        if cfg.head_dim * cfg.num_heads != cfg.d_model:
            problems.append(
                f"head_dim * num_heads = {cfg.head_dim * cfg.num_heads} != d_model={cfg.d_model}"
            )
        if problems:
            raise ValueError(f"GPT-2 cannot hold this config.model: {'; '.join(problems)}")
    return name


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One of our param leaves <-> one transformers tensor, or an equal part of a fused one.

    ours: path in the params tree, within a layer for per-layer maps. hf: the transformers
    name, "{i}" standing for the layer index. hf_shape: the whole transformers tensor's shape.
    A fused tensor is `parts` equal chunks along its last axis; this map is chunk `part`.
    """

    ours: Path
    hf: str
    hf_shape: tuple[int, ...]
    to_hf: Callable[[np.ndarray], np.ndarray]
    to_ours: Callable[[np.ndarray], np.ndarray]
    part: int = 0
    parts: int = 1


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


def _reshaper(shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x.reshape(shape)


def _linear(ours_shape: tuple[int, ...], num_in: int) -> tuple[Callable, Callable]:
    """(to_hf, to_ours) of a kernel [*in, *out] and a torch Linear weight [prod(out), prod(in)]."""
    fan_in = math.prod(ours_shape[:num_in])
    fan_out = math.prod(ours_shape[num_in:])

    def to_hf(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(fan_in, fan_out).T)

    def to_ours(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.T).reshape(ours_shape)

    return to_hf, to_ours


def _gpt2_layer(cfg: decoder.ModelConfig) -> list[TensorMap]:
    d, n, h, m = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    p = "transformer.h.{i}."
    maps = []
    for norm, hf in (("pre_attention_norm", "ln_1"), ("pre_mlp_norm", "ln_2")):
        maps.append(TensorMap((norm, "scale"), f"{p}{hf}.weight", (d,), _same, _same))
        maps.append(TensorMap((norm, "bias"), f"{p}{hf}.bias", (d,), _same, _same))
    for part, name in enumerate(("query", "key", "value")):
        kernel = (lambda x: x.reshape(d, n * h), _reshaper((d, n, h)))
        bias = (lambda x: x.reshape(n * h), _reshaper((n, h)))
        for leaf, shape, (to_hf, to_ours), suffix in (
            ("kernel", (d, 3 * d), kernel, "weight"),
            ("bias", (3 * d,), bias, "bias"),
        ):
            hf = f"{p}attn.c_attn.{suffix}"
            maps.append(TensorMap(("attention", name, leaf), hf, shape, to_hf, to_ours, part, 3))
    maps += [
        TensorMap(
            ("attention", "out", "kernel"),
            f"{p}attn.c_proj.weight",
            (d, d),
            lambda x: x.reshape(n * h, d),
            _reshaper((n, h, d)),
        ),
        TensorMap(("attention", "out", "bias"), f"{p}attn.c_proj.bias", (d,), _same, _same),
        TensorMap(("mlp", "wi", "kernel"), f"{p}mlp.c_fc.weight", (d, m), _same, _same),
        TensorMap(("mlp", "wi", "bias"), f"{p}mlp.c_fc.bias", (m,), _same, _same),
        TensorMap(("mlp", "wo", "kernel"), f"{p}mlp.c_proj.weight", (m, d), _same, _same),
        TensorMap(("mlp", "wo", "bias"), f"{p}mlp.c_proj.bias", (d,), _same, _same),
    ]
    return maps


def _llama_layer(cfg: decoder.ModelConfig) -> list[TensorMap]:
    d, n, k, h, m = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    p = "model.layers.{i}."
    maps = [
        TensorMap(
            ("pre_attention_norm", "scale"), f"{p}input_layernorm.weight", (d,), _same, _same
        ),
        TensorMap(
            ("pre_mlp_norm", "scale"), f"{p}post_attention_layernorm.weight", (d,), _same, _same
        ),
    ]
    linears = [
        (("attention", "query"), "self_attn.q_proj", (d, n, h), 1),
        (("attention", "key"), "self_attn.k_proj", (d, k, h), 1),
        (("attention", "value"), "self_attn.v_proj", (d, k, h), 1),
        (("attention", "out"), "self_attn.o_proj", (n, h, d), 2),
        (("mlp", "wi_gate"), "mlp.gate_proj", (d, m), 1),
        (("mlp", "wi_up"), "mlp.up_proj", (d, m), 1),
        (("mlp", "wo"), "mlp.down_proj", (m, d), 1),
    ]
    for ours, hf, shape, num_in in linears:
        to_hf, to_ours = _linear(shape, num_in)
        fan_in, fan_out = math.prod(shape[:num_in]), math.prod(shape[num_in:])
        maps.append(
            TensorMap((*ours, "kernel"), f"{p}{hf}.weight", (fan_out, fan_in), to_hf, to_ours)
        )
        if cfg.use_bias:
            out_shape = shape[num_in:]
            maps.append(
                TensorMap(
                    (*ours, "bias"),
                    f"{p}{hf}.bias",
                    (fan_out,),
                    lambda x: x.reshape(-1),
                    _reshaper(out_shape),
                )
            )
    return maps


def layer_maps(cfg: decoder.ModelConfig) -> list[TensorMap]:
    """Per-layer maps; a GPT-2 map of a bias our model lacks (use_bias=False) is kept, the
    exporter writes zeros for it (see `missing_bias`)."""
    return _gpt2_layer(cfg) if architecture(cfg) == GPT2 else _llama_layer(cfg)


def top_maps(cfg: decoder.ModelConfig) -> list[TensorMap]:
    """Embeddings, final norm and (untied) output head."""
    d, v = cfg.d_model, cfg.vocab_size
    if architecture(cfg) == GPT2:
        maps = [
            TensorMap(("token_embedding",), "transformer.wte.weight", (v, d), _same, _same),
            TensorMap(
                ("position_embedding",), "transformer.wpe.weight", (cfg.max_len, d), _same, _same
            ),
            TensorMap(("final_norm", "scale"), "transformer.ln_f.weight", (d,), _same, _same),
            TensorMap(("final_norm", "bias"), "transformer.ln_f.bias", (d,), _same, _same),
        ]
    else:
        maps = [
            TensorMap(("token_embedding",), "model.embed_tokens.weight", (v, d), _same, _same),
            TensorMap(("final_norm", "scale"), "model.norm.weight", (d,), _same, _same),
        ]
    if not cfg.tie_embeddings:
        maps.append(TensorMap(("lm_head",), "lm_head.weight", (v, d), _transpose, _transpose))
    return maps


def missing_bias(cfg: decoder.ModelConfig, path: Path) -> bool:
    """A GPT-2 bias (or LayerNorm bias) that a use_bias=False model does not have."""
    return not cfg.use_bias and path[-1] == "bias"


def layer_names(cfg: decoder.ModelConfig) -> list[str]:
    """Our per-layer subtree names: ["layers"] (scanned) or ["layers_0", ...]."""
    return ["layers"] if cfg.scan_layers else [f"layers_{i}" for i in range(cfg.num_layers)]


def hf_tensor_shapes(cfg: decoder.ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every transformers tensor name the export writes, with its shape, in writing order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for tensor in top_maps(cfg)[:1]:
        shapes[tensor.hf] = tensor.hf_shape
    for i in range(cfg.num_layers):
        for tensor in layer_maps(cfg):
            shapes.setdefault(tensor.hf.format(i=i), tensor.hf_shape)
    for tensor in top_maps(cfg)[1:]:
        shapes[tensor.hf] = tensor.hf_shape
    return shapes


def _layer_leaf(flat: Mapping[Path, Any], cfg: decoder.ModelConfig, i: int, path: Path) -> Any:
    """Layer i's leaf at `path` from a flat {path: array} tree, scanned or not."""
    if cfg.scan_layers:
        return np.asarray(flat[("layers", *path)][i])
    return np.asarray(flat[(f"layers_{i}", *path)])


def export_tensors(
    flat: Mapping[Path, Any], cfg: decoder.ModelConfig, dtype: Any = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(transformers name, array) pairs in `hf_tensor_shapes` order from our flat params
    ({path tuple: host array}; scanned leaves stacked on axis 0), cast to `dtype` if given."""
    top = {tensor.hf: tensor for tensor in top_maps(cfg)}
    by_name: dict[str, list[TensorMap]] = {}
    for tensor in layer_maps(cfg):
        by_name.setdefault(tensor.hf, []).append(tensor)
    for name, shape in hf_tensor_shapes(cfg).items():
        if name in top and missing_bias(cfg, top[name].ours):
            array = np.zeros(shape, np.float32)
        elif name in top:
            array = top[name].to_hf(np.asarray(flat[top[name].ours]))
        else:
            template, i = _template(name, cfg)
            chunks = []
            for tensor in sorted(by_name[template], key=lambda t: t.part):
                if missing_bias(cfg, tensor.ours):
                    chunks.append(np.zeros(shape[-1] // tensor.parts, np.float32))
                else:
                    chunks.append(tensor.to_hf(_layer_leaf(flat, cfg, i, tensor.ours)))
            array = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=-1)
        if tuple(array.shape) != tuple(shape):
            raise AssertionError(f"{name}: built shape {array.shape}, expected {shape}")
        yield name, np.ascontiguousarray(array if dtype is None else array.astype(dtype))


def _template(name: str, cfg: decoder.ModelConfig) -> tuple[str, int]:
    """("transformer.h.{i}.ln_1.weight", 3) from "transformer.h.3.ln_1.weight"."""
    prefix = "transformer.h." if architecture(cfg) == GPT2 else "model.layers."
    index, _, rest = name[len(prefix) :].partition(".")
    return f"{prefix}{{i}}.{rest}", int(index)


def import_leaf(
    read: Callable[[str, int, int], np.ndarray], cfg: decoder.ModelConfig, path: Path
) -> np.ndarray:
    """Our whole leaf at `path` (scanned: all layers stacked) from transformers tensors.

    read(name, part, parts) returns chunk `part` of `parts` along the tensor's last axis.
    """
    for tensor in top_maps(cfg):
        if tensor.ours == path:
            return tensor.to_ours(read(tensor.hf, tensor.part, tensor.parts))
    head, rest = path[0], tuple(path[1:])
    for tensor in layer_maps(cfg):
        if tensor.ours != rest:
            continue
        indices = range(cfg.num_layers) if head == "layers" else [int(head.split("_")[1])]
        leaves = [
            tensor.to_ours(read(tensor.hf.format(i=i), tensor.part, tensor.parts)) for i in indices
        ]
        return np.stack(leaves) if head == "layers" else leaves[0]
    raise KeyError(f"no transformers tensor maps to our parameter {'/'.join(path)}")


# ----- configs -----


def hf_config(
    cfg: decoder.ModelConfig, *, bos_id: int, eos_id: int, pad_id: int, dtype: str
) -> dict[str, Any]:
    """config.json of the transformers model equal to `cfg`."""
    arch = architecture(cfg)
    common = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "torch_dtype": dtype,  # transformers 4.x
        "dtype": dtype,  # transformers 5.x
    }
    if arch == GPT2:
        return {
            **common,
            "n_positions": cfg.max_len,
            "n_ctx": cfg.max_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads,
            "n_inner": cfg.mlp_dim,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": cfg.norm_eps,
            "resid_pdrop": cfg.dropout_rate,
            "embd_pdrop": cfg.dropout_rate,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }
    return {
        **common,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers 4.x
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # 5.x
        "attention_bias": cfg.use_bias,
        "mlp_bias": cfg.use_bias,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
    }


def model_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    """config.model fields a transformers config.json implies; ValueError for settings our
    Decoder does not compute (they would change the model's outputs)."""
    kind = hf.get("model_type")
    if kind == GPT2:
        return _gpt2_fields(hf)
    if kind == LLAMA:
        return _llama_fields(hf)
    raise ValueError(f"model_type {kind!r} is not supported; expected {GPT2!r} or {LLAMA!r}")


def _gpt2_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    problems = []
    if hf.get("activation_function", "gelu_new") not in TANH_GELUS:
        problems.append(
            f"activation_function={hf['activation_function']!r} (ours is the tanh GELU, "
            f"one of {TANH_GELUS})"
        )
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
        problems.append("attention scaling other than 1/sqrt(head_dim)")
    if problems:
        raise ValueError("GPT-2 config not supported: " + "; ".join(problems))
    d, n = int(hf["n_embd"]), int(hf["n_head"])
    return {
        **_STYLE[GPT2],
        "num_layers": int(hf["n_layer"]),
        "d_model": d,
        "num_heads": n,
        "num_kv_heads": n,
        "head_dim": d // n,
        "mlp_dim": int(hf.get("n_inner") or 4 * d),
        "vocab_size": int(hf["vocab_size"]),
        "max_len": int(hf["n_positions"]),
        "norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
        "use_bias": True,
    }


def _llama_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (ours is SwiGLU with silu)")
    if rope_type != "default":
        problems.append(f"rope type {rope_type!r} (ours is the default RoPE)")
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        problems.append("attention_bias != mlp_bias (ours has one use_bias)")
    if problems:
        raise ValueError("Llama config not supported: " + "; ".join(problems))
    d, n = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    return {
        **_STYLE[LLAMA],
        "num_layers": int(hf["num_hidden_layers"]),
        "d_model": d,
        "num_heads": n,
        "num_kv_heads": int(hf.get("num_key_value_heads") or n),
        "head_dim": int(hf.get("head_dim") or d // n),
        "mlp_dim": int(hf["intermediate_size"]),
        "vocab_size": int(hf["vocab_size"]),
        "max_len": int(hf.get("max_position_embeddings", 2048)),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "use_bias": bool(hf.get("attention_bias", False)),
    }
