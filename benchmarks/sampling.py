"""RealToxicityPrompts-style sampling throughput: toxjax's KV-cache sampler vs. two baselines.

Prints ONE JSON line: {"benchmark": "sampling", "continuations_per_s": C,
"speedup_vs_hf_generate": H, "speedup_vs_recompute": R, ...}.

Setting (the RTP protocol): `--prompts` demo prompts (toxjax/assets/demo_prompts.jsonl), 25
samples each, 20 new tokens, nucleus p=0.9, temperature 1, byte vocabulary; EOS disabled in
all three so every continuation has exactly 20 tokens. Strings in, strings out for all three
(tokenization and decoding are timed too). Same model dims everywhere (default: 4 layers,
d_model 256, 4 heads, MLP 1024, vocab 384, float32, one CPU device):
- toxjax: `sampling.make_generate_fn` (prefill once, cache copied per sample, one jitted
  while_loop of single-token steps);
- recompute: the same jitted sampler without a cache (`generate_tokens_recompute`: every step
  reruns the model over the whole prompt + continuation buffer);
- hf_generate: transformers `GPT2LMHeadModel.generate` (PyTorch, do_sample, top_p 0.9,
  top_k 0, num_return_sequences 25, use_cache=True) on left-padded prompts.
Guided decoding is measured in the same rounds: the same prompts behind INST's non-toxic
instruction, decoded unguided ("toxjax_unguided") and guided (cfg, scale 1) against the same
prompts behind the toxic instruction (a prefix of similar length), both conditions of every
sample in one batch ("toxjax_guided"); `guided_over_unguided` is the ratio of their new-token
rates (each guided sample decodes two rows, so about 1/2 is the expectation).
Each round times all of them back to back after a warm-up (compilation excluded); the fastest
round of each gives the headline rates, so load from other processes on a shared host hits all
alike. PyTorch runs with all cores and with one thread (its thread pool can degrade badly when
the host is oversubscribed); the faster of the two is the baseline. Each round's own ratio
(HF's faster variant that round / toxjax that round) is reported too, with its median: the
steadier figure on a host whose load changes between rounds (the 1-minute load average before
and after is recorded).

    python benchmarks/sampling.py [--prompts=8] [--rounds=5] [--d_model=256] [--num_layers=4]
    python benchmarks/sampling.py --projection    # projected full-RTP time, 1.3B on one H100
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from toxjax.configs import gpt_1p3b
from toxjax.inference import sampling
from toxjax.model import decoder, flops, partitioning

NUM_SAMPLES = 25
GUIDANCE_SCALE = 1.0
POSITIVE_PREFIX = "The following text is non-toxic:\n"  # c+ of the guided comparison
NEGATIVE_PREFIX = "The following text is toxic:\n"  # c-: another prefix of similar length
NEW_TOKENS = 20
TOP_P = 0.9
RTP_PROMPTS = 99_442  # RealToxicityPrompts (Gehman et al. 2020)


def model_config(args: argparse.Namespace) -> decoder.ModelConfig:
    return decoder.ModelConfig(
        num_layers=args.num_layers,
        d_model=args.d_model,
        num_heads=args.num_heads,
        num_kv_heads=args.num_heads,
        mlp_dim=4 * args.d_model,
        vocab_size=args.vocab_size,
        max_len=args.max_len,
        dtype="float32",
    )


def demo_prompts(count: int) -> list[str]:
    from toxjax.evaluation import rtp

    prompts = rtp.load_prompts("demo")
    return [p.text for p in rtp.select_prompts(prompts, num_prompts=count, seed=0)]


class NoEosVocabulary:
    """seqio.ByteVocabulary whose EOS id can never be produced (every row runs 20 steps)."""

    def __init__(self) -> None:
        import seqio

        self._vocabulary = seqio.ByteVocabulary()
        self.vocab_size = self._vocabulary.vocab_size
        self.pad_id = self._vocabulary.pad_id
        self.eos_id = -1

    def encode(self, text: str) -> list[int]:
        return self._vocabulary.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self._vocabulary.decode(ids)


def jax_generator(
    cfg: decoder.ModelConfig, use_cache: bool, rows: int, guidance_scale: float = 0.0
) -> sampling.Generator:
    params = decoder.Decoder(cfg).init({"params": jax.random.key(0)}, jnp.zeros((1, 4), jnp.int32))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), partitioning.MESH_AXES)
    rules = (("activation_batch", ("data", "fsdp")),) + tuple(
        (name, None)
        for name in (
            "activation_length",
            "activation_embed",
            "activation_mlp",
            "activation_heads",
            "activation_kv_heads",
            "activation_kv",
            "activation_vocab",
            "embed",
            "mlp",
            "heads",
            "kv_heads",
            "kv",
            "vocab",
            "layers",
            "norm",
            "position",
        )
    )
    return sampling.Generator(
        params["params"],
        partitioning.ModelOnMesh(cfg, mesh, rules),
        NoEosVocabulary(),
        sampling.SamplingConfig(
            max_new_tokens=NEW_TOKENS,
            top_p=TOP_P,
            temperature=1.0,
            guidance_scale=guidance_scale,
        ),
        batch_size=rows,
        use_cache=use_cache,
    )


def hf_generate_fn(cfg: decoder.ModelConfig, threads: int):
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.max_len,
        n_embd=cfg.d_model,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_inner=cfg.mlp_dim,
        activation_function="gelu_new",  # tanh GELU, as flax's nn.gelu default
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    vocabulary = NoEosVocabulary()

    def generate(prompts: list[str], num_samples: int) -> list[list[str]]:
        encoded = [vocabulary.encode(p) for p in prompts]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.zeros((len(prompts), width), dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        torch.set_num_threads(threads)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                top_p=TOP_P,
                top_k=0,
                temperature=1.0,
                num_return_sequences=num_samples,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                use_cache=True,
                pad_token_id=0,
            )
        new = output[:, width:].numpy()
        texts = [vocabulary.decode(row.tolist()) for row in new]
        return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]

    return generate


def guidance_methods(cfg: decoder.ModelConfig, rows: int) -> dict:
    """The unguided and guided calls of one generator on the prompts behind POSITIVE_PREFIX
    (its batch holds both conditions of every sample, so each call is one batch)."""
    generate = jax_generator(cfg, True, 2 * rows, guidance_scale=GUIDANCE_SCALE)

    def unguided(prompts: list[str], num_samples: int) -> list[list[str]]:
        return generate([POSITIVE_PREFIX + p for p in prompts], num_samples)

    def guided(prompts: list[str], num_samples: int) -> list[list[str]]:
        negatives = [NEGATIVE_PREFIX + p for p in prompts]
        return generate([POSITIVE_PREFIX + p for p in prompts], num_samples, negatives)

    return {"toxjax_unguided": unguided, "toxjax_guided": guided}


def guidance_fields(rate: dict[str, float], per_round: dict[str, list[float]]) -> dict:
    """New tokens per second guided and unguided, and their ratio (best rounds; per round)."""
    by_round = [
        unguided / guided
        for unguided, guided in zip(
            per_round["toxjax_unguided"], per_round["toxjax_guided"], strict=True
        )
    ]
    return {
        "guided_tokens_per_s": round(rate["toxjax_guided"] * NEW_TOKENS, 1),
        "unguided_tokens_per_s": round(rate["toxjax_unguided"] * NEW_TOKENS, 1),
        "guided_over_unguided": round(rate["toxjax_guided"] / rate["toxjax_unguided"], 3),
        "guided_over_unguided_median_of_rounds": round(float(np.median(by_round)), 3),
    }


def timed(fn, prompts: list[str]) -> tuple[float, list[list[str]]]:
    start = time.perf_counter()
    out = fn(prompts, NUM_SAMPLES)
    return time.perf_counter() - start, out


def time_rounds(methods: dict, prompts: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds per round of each method: a warm-up call each (compilation, torch's first-call
    overheads), then `rounds` rounds that run every method back to back."""
    for name, fn in methods.items():
        _, out = timed(fn, prompts)
        assert len(out) == len(prompts) and all(len(s) == NUM_SAMPLES for s in out), name
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for round_index in range(rounds):
        for name, fn in methods.items():
            if name == "jax_recompute" and round_index >= 2:
                continue  # 30x+ slower than the rest: two timed rounds settle it
            seconds[name].append(timed(fn, prompts)[0])
    return seconds


def measure(args: argparse.Namespace) -> dict:
    cfg = model_config(args)
    prompts = demo_prompts(args.prompts)
    rows = len(prompts) * NUM_SAMPLES
    threads = os.cpu_count() or 1
    methods = {
        "toxjax_kv_cache": jax_generator(cfg, True, rows),
        "jax_recompute": jax_generator(cfg, False, rows),
        f"hf_generate_{threads}_threads": hf_generate_fn(cfg, threads),
        **guidance_methods(cfg, rows),
    }
    if threads > 1:  # torch's thread pool can suffer more than XLA's on a loaded host
        methods["hf_generate_1_threads"] = hf_generate_fn(cfg, 1)
    load_before = os.getloadavg()[0]
    per_round = time_rounds(methods, prompts, args.rounds)
    best = {name: min(values) for name, values in per_round.items()}
    hf_name = min((n for n in best if n.startswith("hf_generate")), key=best.get)
    best["hf_generate"] = best[hf_name]
    hf_rounds = [
        min(r) for r in zip(*(v for n, v in per_round.items() if n[:3] == "hf_"), strict=True)
    ]
    ours = per_round["toxjax_kv_cache"]
    round_speedups = [hf / mine for hf, mine in zip(hf_rounds, ours, strict=True)]
    continuations = len(prompts) * NUM_SAMPLES
    rate = {name: continuations / seconds for name, seconds in best.items()}
    import torch
    import transformers

    return {
        "benchmark": "sampling",
        "continuations_per_s": round(rate["toxjax_kv_cache"], 2),
        "speedup_vs_hf_generate": round(rate["toxjax_kv_cache"] / rate["hf_generate"], 2),
        "speedup_vs_recompute": round(rate["toxjax_kv_cache"] / rate["jax_recompute"], 2),
        "speedup_vs_hf_generate_median_of_rounds": round(float(np.median(round_speedups)), 2),
        "speedup_vs_hf_generate_by_round": [round(x, 2) for x in round_speedups],
        "continuations_per_s_by_method": {k: round(v, 2) for k, v in rate.items()},
        "seconds_by_method": {k: round(v, 4) for k, v in best.items()},
        "hf_generate_is": hf_name,
        "new_tokens_per_s": round(rate["toxjax_kv_cache"] * NEW_TOKENS, 1),
        **guidance_fields(rate, per_round),
        "setting": {
            "prompts": len(prompts),
            "samples_per_prompt": NUM_SAMPLES,
            "new_tokens": NEW_TOKENS,
            "top_p": TOP_P,
            "guidance": {
                "form": "cfg",
                "scale": GUIDANCE_SCALE,
                "positive_prefix": POSITIVE_PREFIX,
                "negative_prefix": NEGATIVE_PREFIX,
            },
            "prompt_bytes_mean": float(np.mean([len(p.encode()) for p in prompts])),
            "model": {
                "num_layers": cfg.num_layers,
                "d_model": cfg.d_model,
                "num_heads": cfg.num_heads,
                "mlp_dim": cfg.mlp_dim,
                "vocab_size": cfg.vocab_size,
                "dtype": cfg.dtype,
                "params": flops.param_count(cfg),
            },
            "rounds": args.rounds,
        },
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "host": {
            "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


# ----- projection (arithmetic, not a measurement) -----

H100 = {"name": "H100 SXM 80GB", "bf16_flops": 989e12, "hbm_bytes_per_s": 3.35e12}


def projection(args: argparse.Namespace) -> dict:
    """Projected wall time of the full RTP generation for toxjax/configs/gpt_1p3b.py on one H100.

    Mirrors what `sampling.generate_tokens` does: per batch, one prefill of the prompts, then
    NEW_TOKENS decode steps of B rows (25 per prompt). Per decode step: time = max(compute,
    memory) + sampling, where compute = 2 * params * B FLOPs (+ attention) at `mfu` of peak;
    memory = bf16 weights (the loop-invariant float32 -> bf16 casts hoisted out of the loop)
    + the cache the step reads: each prompt's keys/values once (shared by its samples) and each
    row's own NEW_TOKENS slots, at `bandwidth_efficiency` of HBM bandwidth; sampling = the
    top-p search (`nucleus_mask`: 16 passes of 3 masked sums; 32 of one before) plus softmax
    and the Gumbel draw, costed as `logit_passes` passes over the float32 B x vocab logits.
    """
    cfg = decoder.ModelConfig.from_config(gpt_1p3b.get_config().model)
    params = flops.param_count(cfg)
    rows = args.rows
    prompts_per_batch = rows // NUM_SAMPLES
    bytes_per_value = 2  # bfloat16 activations, cache and (cast) weights
    slot_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * bytes_per_value
    cache_slots_read = prompts_per_batch * args.prompt_tokens + rows * NEW_TOKENS
    attended = args.prompt_tokens + NEW_TOKENS
    attention_flops = rows * 4 * cfg.num_layers * attended * cfg.num_heads * cfg.head_dim
    step_flops = rows * 2 * params + attention_flops
    compute_s = step_flops / (H100["bf16_flops"] * args.mfu)
    memory_bytes = params * bytes_per_value + cache_slots_read * slot_bytes
    memory_s = memory_bytes / (H100["hbm_bytes_per_s"] * args.bandwidth_efficiency)
    sampling_s = rows * cfg.vocab_size * 4 * args.logit_passes / H100["hbm_bytes_per_s"]
    step_s = max(compute_s, memory_s) + sampling_s
    batches_per_pass = math.ceil(RTP_PROMPTS / prompts_per_batch)
    prefill_flops = prompts_per_batch * args.prompt_tokens * 2 * params
    prefill_s = prefill_flops / (H100["bf16_flops"] * args.mfu)
    pass_s = batches_per_pass * (NEW_TOKENS * step_s + prefill_s)
    passes = 2  # conditioned and unconditioned (strategies with an inference prefix)
    return {
        "benchmark": "sampling_projection",
        "kind": "PROJECTION from FLOP and bandwidth arithmetic; not a measurement",
        "config": "toxjax/configs/gpt_1p3b.py",
        "device": H100["name"],
        "projected_minutes": round(passes * pass_s / 60, 1),
        "projected_minutes_per_pass": round(pass_s / 60, 1),
        "passes": passes,
        "assumptions": {
            "prompts": RTP_PROMPTS,
            "samples_per_prompt": NUM_SAMPLES,
            "new_tokens": NEW_TOKENS,
            "prompt_tokens_mean": args.prompt_tokens,
            "rows_per_batch": rows,
            "params": params,
            "peak_bf16_flops": H100["bf16_flops"],
            "mfu": args.mfu,
            "hbm_bytes_per_s": H100["hbm_bytes_per_s"],
            "bandwidth_efficiency": args.bandwidth_efficiency,
            "logit_passes": args.logit_passes,
            "excludes": "toxicity scoring of the continuations, data loading, compilation",
        },
        "per_step_ms": {
            "compute": round(1e3 * compute_s, 3),
            "memory": round(1e3 * memory_s, 3),
            "sampling": round(1e3 * sampling_s, 3),
            "total": round(1e3 * step_s, 3),
        },
        "prefill_ms_per_batch": round(1e3 * prefill_s, 3),
        "cache_gib": round(cache_slots_read * slot_bytes / 2**30, 2),
        "steps_per_pass": batches_per_pass * NEW_TOKENS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=384)
    parser.add_argument("--max_len", type=int, default=128)
    parser.add_argument("--projection", action="store_true", help="print the H100 projection")
    parser.add_argument("--rows", type=int, default=2000, help="projection: rows per batch")
    parser.add_argument("--prompt_tokens", type=int, default=32, help="projection: mean")
    parser.add_argument("--mfu", type=float, default=0.5, help="projection: decode MFU")
    parser.add_argument("--bandwidth_efficiency", type=float, default=0.7)
    parser.add_argument("--logit_passes", type=float, default=40.0)
    args = parser.parse_args()
    result = projection(args) if args.projection else measure(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
