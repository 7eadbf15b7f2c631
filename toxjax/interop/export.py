"""A training run's checkpoint as a transformers model directory (toxjax-export).

    OUTPUT_DIR/config.json                      GPT2LMHeadModel or LlamaForCausalLM (hf_layout)
    OUTPUT_DIR/model*.safetensors (+ index)     the params, in `dtype` (default float32)
    OUTPUT_DIR/tokenizer.json, ...              the task's vocabulary (hf_tokenizer)
    OUTPUT_DIR/README.md                        model card: strategy, conditioning, prefix
    OUTPUT_DIR/toxjax_export.json               the same facts, machine-readable

The params are restored params-only into a mesh over this host's devices and then fetched to
host memory (the whole model in host RAM, never whole on one device); shards of
`max_shard_bytes` are written one at a time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from toxjax import fileio
from toxjax.data import vocab
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.interop import hf_checkpoint, hf_layout, hf_tokenizer, trained_run
from toxjax.model import decoder

EXPORT_INFO = "toxjax_export.json"
MODEL_CARD = "README.md"
DTYPES = ("float32", "bfloat16", "float16")


def host_params(params: Any) -> dict[tuple[str, ...], np.ndarray]:
    """{path: numpy array} of (possibly sharded) params, fetched one leaf at a time."""
    flat = traverse_util.flatten_dict(params)
    return {path: np.asarray(jax.device_get(leaf)) for path, leaf in flat.items()}


def write_model(
    params: Any,
    model_config: decoder.ModelConfig,
    directory: str,
    *,
    vocabulary: Any,
    dtype: str = "float32",
    max_shard_bytes: int = hf_checkpoint.DEFAULT_SHARD_BYTES,
) -> list[str]:
    """config.json and safetensors of `params`; returns the safetensors file names."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    hf_layout.architecture(model_config)  # unsupported configs fail before any fetch
    np_dtype = np.dtype(jnp.dtype(dtype))
    config = hf_layout.hf_config(
        model_config,
        bos_id=vocab.START_ID,
        eos_id=int(vocabulary.eos_id),
        pad_id=int(vocabulary.pad_id),
        dtype=dtype,
    )
    sizes = {
        name: hf_checkpoint.tensor_bytes(shape, np_dtype)
        for name, shape in hf_layout.hf_tensor_shapes(model_config).items()
    }
    tensors = hf_layout.export_tensors(host_params(params), model_config, np_dtype)
    return hf_checkpoint.write_checkpoint(
        directory, config, tensors, sizes, max_shard_bytes=max_shard_bytes
    )


def export_info(run: trained_run.TrainedRun, tokenizer: Mapping[str, Any]) -> dict[str, Any]:
    """The facts the model card states, as JSON."""
    return {
        "source_workdir": run.workdir,
        "step": run.step,
        "task": run.config.data.task,
        "strategy": run.strategy.value,
        "conditioning_format": dataclasses.asdict(run.fmt),
        "inference_prefix": run.inference_prefix,
        "inference_suffix": run.inference_suffix,
        "architecture": hf_layout.ARCHITECTURES[hf_layout.architecture(run.model_config)],
        "tokenizer": dict(tokenizer),
        "suppress_tokens": suppress_tokens(run),
        "model_config": dataclasses.asdict(run.model_config),
    }


def suppress_tokens(run: trained_run.TrainedRun) -> list[int]:
    """Ids toxjax never samples: PAD, embedding rows past the vocabulary, and pieces that
    spell a whole conditioning signal (vocab.signal_token_ids)."""
    vocabulary = run.vocabulary
    padding = range(int(vocabulary.vocab_size), run.model_config.vocab_size)
    signals = vocab.signal_token_ids(vocabulary, run.fmt)
    return sorted({int(vocabulary.pad_id), *padding, *signals})


def _conditioning_lines(
    strategy: Strategy, fmt: ConditioningFormat, prefix: str, suffix: str = ""
) -> list[str]:
    if strategy in (Strategy.BASE, Strategy.FILTER):
        how = (
            "no signal in the text (raw documents)"
            if strategy is Strategy.BASE
            else f"no signal; documents scored above {fmt.threshold} were dropped"
        )
        return [f"- conditioning: {how}; generate with no prefix."]
    if strategy is Strategy.SEGMENT:
        return [
            f"- conditioning signal ({fmt.attribute}): `{fmt.segment_aligned}` before every "
            f"segment scored <= {fmt.threshold}, `{fmt.segment_misaligned}` before the others, "
            f"on {fmt.augment_fraction:.0%} of documents; never sample either token",
            f"- **inference**: prefix `{json.dumps(prefix)}`, then the prompt, then "
            f"`{json.dumps(suffix)}` (asks for a non-toxic continuation)",
        ]
    if strategy is Strategy.MEDA:
        how = f"`{fmt.meda_template}` (score with {fmt.score_precision} decimals)"
    else:
        how = f"`{fmt.inst_toxic}` / `{fmt.inst_nontoxic}` (score > {fmt.threshold} is toxic)"
    return [
        f"- conditioning signal ({fmt.attribute}): {how}, {fmt.position} of the text, "
        f"separated by {json.dumps(fmt.separator)}, on {fmt.augment_fraction:.0%} of documents",
        f"- **inference prefix** (asks for non-toxic text): `{json.dumps(prefix)}`",
    ]


def _guidance_lines(strategy: Strategy, fmt: ConditioningFormat) -> list[str]:
    """Guided decoding needs both signals in one decoding loop: a toxjax-side feature."""
    if strategy in (Strategy.BASE, Strategy.FILTER):
        return []
    before, after = fmt.toxic_prefix(strategy), fmt.toxic_suffix(strategy)
    toxic = " and ".join(
        f"`{json.dumps(text)}` {where} it"
        for text, where in ((before, "before"), (after, "after"))
        if text
    )
    return [
        "Guided (contrastive) decoding: toxjax can decode each prompt under its non-toxic "
        f"signal and, in the same batch, under its toxic signal ({toxic}), drawing every token "
        "from a combination of the two next-token distributions (classifier-free guidance, "
        "Sanchez et al. 2023, or DExperts, Liu et al. 2021) and feeding it to both. It needs "
        "both signals and a KV cache per condition, which transformers' `generate` does not "
        "do: run it on the toxjax checkpoint this model was exported from, e.g. with toxjax's "
        "lm-evaluation-harness model: `python -m toxjax.interop.lm_eval_main "
        "--checkpoint=WORKDIR --tasks=TASKS --model_args=guidance_scale=1.5,guidance_form=cfg` "
        "(guidance_scale 0 is plain decoding).",
        "",
    ]


def model_card(info: Mapping[str, Any], fmt: ConditioningFormat) -> str:
    """README.md of the exported model."""
    strategy = Strategy.parse(info["strategy"])
    prefix = info["inference_prefix"]
    tokenizer = info["tokenizer"]
    config = info["model_config"]
    padding = (
        f"Embedding rows {tokenizer['size']}..{config['vocab_size'] - 1} are padding (no token)."
        if config["vocab_size"] > tokenizer["size"]
        else ""
    )
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [toxjax, toxicity-conditioning, {strategy.value}]",
        "---",
        "",
        f"# {info['task']} ({strategy.value}), step {info['step']}",
        "",
        "A decoder-only language model pretrained with "
        "toxjax (toxicity-conditioned pretraining after Prabhumoye et "
        "al., EACL 2023), exported from its orbax checkpoint.",
        "",
        f"- strategy: **{strategy.value.upper()}**, training task `{info['task']}`",
        *_conditioning_lines(strategy, fmt, prefix, info.get("inference_suffix", "")),
        f"- architecture: `{info['architecture']}`, {config['num_layers']} layers, width "
        f"{config['d_model']}, {config['vocab_size']} embedding rows",
        f"- tokenizer: {tokenizer['kind']} ({tokenizer['size']} ids; pad 0, eos 1, unk 2). "
        f"Every sequence starts with id {vocab.START_ID}, as every training document "
        "did: the tokenizer puts it first (lm-evaluation-harness' `hf` model does too; for "
        "rolling perplexity pass `add_bos_token=False`, or it also scores that id). " + padding,
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        'model = AutoModelForCausalLM.from_pretrained("PATH")',
        f"prefix = {json.dumps(prefix)}",
        'inputs = tokenizer(prefix + "Your prompt", return_tensors="pt")  # start id first',
        f"suppress = {_short_list(info['suppress_tokens'])}  # {EXPORT_INFO}: suppress_tokens",
        "out = model.generate(  # with the attention mask: the start id is also PAD",
        "    **inputs, do_sample=True, top_p=0.9, max_new_tokens=20, suppress_tokens=suppress",
        ")",
        "start = inputs.input_ids.shape[1]",
        "print(tokenizer.decode(out[0, start:], skip_special_tokens=True))",
        "```",
        "",
        "toxjax samples as above: nucleus sampling, never PAD, the padding rows or a piece "
        "spelling a whole signal (`suppress_tokens`).",
        "",
        *_guidance_lines(strategy, fmt),
        f"`{EXPORT_INFO}` holds these facts and the full conditioning format as JSON.",
        "",
    ]
    return "\n".join(lines)


def _short_list(ids: list[int]) -> str:
    """A Python expression for a sorted id list, runs written as ranges."""
    parts: list[tuple[int, int]] = []
    for value in ids:
        if parts and parts[-1][1] == value - 1:
            parts[-1] = (parts[-1][0], value)
        else:
            parts.append((value, value))
    items = [str(a) if a == b else f"*range({a}, {b + 1})" for a, b in parts]
    return "[" + ", ".join(items) + "]"


def export_run(
    workdir: str,
    output_dir: str,
    *,
    step: int | None = None,
    config: Any = None,
    vocabulary: str = "",
    strategy: str = "",
    dtype: str = "float32",
    max_shard_bytes: int = hf_checkpoint.DEFAULT_SHARD_BYTES,
) -> dict[str, Any]:
    """Writes the transformers directory of a run's checkpoint; returns export_info's dict."""
    run = trained_run.load_run(
        workdir, step=step, config=config, vocabulary=vocabulary, strategy=strategy
    )
    files = write_model(
        run.params,
        run.model_config,
        output_dir,
        vocabulary=run.vocabulary,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
    )
    tokenizer = hf_tokenizer.save_tokenizer(
        run.vocabulary, output_dir, model_max_length=run.model_config.max_len
    )
    info = {**export_info(run, tokenizer), "dtype": dtype, "files": files}
    fileio.write_atomic(
        fileio.join(output_dir, EXPORT_INFO), (json.dumps(info, indent=2) + "\n").encode()
    )
    fileio.write_atomic(fileio.join(output_dir, MODEL_CARD), model_card(info, run.fmt).encode())
    logging.info(
        "Exported %s step %d to %s (%s)", workdir, run.step, output_dir, info["architecture"]
    )
    return info
