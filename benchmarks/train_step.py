"""Train-step throughput on CPU: toxjax's jitted step vs. the same GPT-2 model in PyTorch.

Prints ONE JSON line: {"benchmark": "train_step", "tokens_per_s", "mfu", "speedup_vs_torch",
...}. Headline numbers are those of the "small" config (d_model 512); every config's details
follow under "configs". MFU is model FLOPs (toxjax.model.flops) over the measured matmul peak of
this host. Both frameworks run float32 by default (bfloat16 matmuls are slow on most CPUs); pass
--dtype=bfloat16 to try it. Each round times the matmul peak, the JAX step and the torch step
back to back; the fastest round of each counts (the best estimate of an unloaded machine on a
shared host), so load from other processes hits all three alike.

"speedup_ceiling" is the speedup over torch that a JAX step running every model FLOP at the
measured matmul peak would reach (torch_step_s * peak / flops_per_step): when it is below a
target, no change to the JAX step can meet that target on this host and dtype. The layers run
as the CPU configs should run them: under nn.scan for the parameter layout, but with every
layer in one scan iteration (--scan_unroll=0), which on CPU is ~1.2x faster than a rolled loop.

    python benchmarks/train_step.py [--configs=tiny,small] [--steps=3] [--rounds=4]
        [--scan_layers=true] [--scan_unroll=0] [--no-torch]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import ml_collections
import numpy as np

from toxjax.configs import tiny
from toxjax.data import input_pipeline
from toxjax.model import decoder, flops
from toxjax.training import train

# name -> (num_layers, d_model, num_heads, mlp_dim, seq_len, global_batch_size)
SIZES = {
    "tiny": (2, 128, 4, 512, 128, 16),
    "small": (4, 512, 8, 2048, 256, 8),
}


def benchmark_config(
    name: str, dtype: str, scan_layers: bool = True, scan_unroll: int = 0
) -> ml_collections.ConfigDict:
    """scan_unroll 0: every layer in one scan iteration (no loop; the fastest on CPU)."""
    layers, d_model, heads, mlp, seq_len, batch = SIZES[name]
    config = tiny.get_config()
    model = config.model
    model.num_layers, model.d_model, model.num_heads, model.num_kv_heads = (
        layers,
        d_model,
        heads,
        heads,
    )
    model.mlp_dim, model.max_len = mlp, seq_len
    model.dtype = dtype
    model.scan_layers = scan_layers
    model.scan_unroll = scan_unroll or layers
    config.data.seq_len, config.data.global_batch_size = seq_len, batch
    config.mesh.ici = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    config.optim.warmup_steps = 0
    config.optim.learning_rate = 1e-4
    config.train.num_steps = 1000
    return config


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch, length = config.data.global_batch_size, config.data.seq_len
    tokens = rng.integers(3, 259, (batch, length + 1)).astype(np.int32)
    return {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": np.ones((batch, length), np.int32),
        "decoder_segment_ids": np.ones((batch, length), np.int32),
        "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
    }


class JaxRunner:
    def __init__(self, config: ml_collections.ConfigDict):
        self.setup = train.create_setup(config)
        self.state = train.create_train_state(self.setup, train.init_rng(config))
        self.step_fn = train.make_train_step(self.setup)
        batch = random_batch(config)
        self.batch = {
            name: jax.device_put(batch[name], self.setup.batch_sharding)
            for name in input_pipeline.FEATURES
        }
        self.run(1)  # compile

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step_fn(self.state, self.batch)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / steps


class TorchRunner:
    """GPT2LMHeadModel with the same dims, AdamW(b2=0.95, wd=0.1) and norm clipping."""

    def __init__(self, config: ml_collections.ConfigDict, dtype: str):
        import torch
        import transformers

        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        self.torch = torch
        model_config = config.model
        gpt2 = transformers.GPT2Config(
            vocab_size=model_config.vocab_size,
            n_positions=model_config.max_len,
            n_embd=model_config.d_model,
            n_layer=model_config.num_layers,
            n_head=model_config.num_heads,
            n_inner=model_config.mlp_dim,
            activation_function="gelu_new",  # tanh approximation, as flax nn.gelu
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
        )
        self.model = transformers.GPT2LMHeadModel(gpt2).to(getattr(torch, dtype))
        self.model.train()
        optim = config.optim
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=optim.learning_rate,
            betas=(optim.b1, optim.b2),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        self.clip = optim.grad_clip_norm
        batch = random_batch(config)
        self.inputs = torch.from_numpy(batch["decoder_input_tokens"].astype(np.int64))
        self.labels = torch.from_numpy(batch["decoder_target_tokens"].astype(np.int64))
        self.run(1)  # warm up allocator and kernels

    def _step(self) -> None:
        torch = self.torch
        logits = self.model(input_ids=self.inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), self.labels.reshape(-1)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.optimizer.step()

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        return (time.perf_counter() - start) / steps


def matmul_flops(dtype: str, n: int = 2048, reps: int = 3) -> float:
    """Best of `reps` jitted n x n matmuls: this host's attainable FLOP/s right now."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (n, n), dtype)
    b = jax.random.normal(keys[1], (n, n), dtype)
    matmul = jax.jit(jax.numpy.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def measure(name: str, args: argparse.Namespace) -> dict:
    config = benchmark_config(name, args.dtype, args.scan_layers, args.scan_unroll)
    model_config = decoder.ModelConfig.from_config(config.model)
    tokens_per_step = config.data.seq_len * config.data.global_batch_size
    flops_per_step = flops.train_flops_per_step(
        model_config, config.data.seq_len, config.data.global_batch_size
    )
    jax_runner = JaxRunner(config)
    torch_runner = TorchRunner(config, args.dtype) if args.torch else None
    jax_times, torch_times, peaks = [], [], []
    for _ in range(args.rounds):
        peaks.append(matmul_flops(args.dtype))
        jax_times.append(jax_runner.run(args.steps))
        if torch_runner is not None:
            torch_times.append(torch_runner.run(args.steps))
    jax_step, peak = min(jax_times), max(peaks)
    result = {
        "num_layers": model_config.num_layers,
        "d_model": model_config.d_model,
        "num_heads": model_config.num_heads,
        "mlp_dim": model_config.mlp_dim,
        "seq_len": config.data.seq_len,
        "global_batch_size": config.data.global_batch_size,
        "params": flops.param_count(model_config),
        "scan_unroll": model_config.scan_unroll,
        "jax_step_s": jax_step,
        "tokens_per_s": tokens_per_step / jax_step,
        "mfu": flops_per_step / jax_step / peak,
        "peak_matmul_flops": peak,
        "jax_step_s_rounds": jax_times,
    }
    if torch_times:
        torch_step = min(torch_times)
        result.update(
            torch_step_s=torch_step,
            torch_tokens_per_s=tokens_per_step / torch_step,
            torch_mfu=flops_per_step / torch_step / peak,
            speedup_vs_torch=torch_step / jax_step,
            # A JAX step at 100% of the measured matmul peak: the most any JAX change can give.
            speedup_ceiling=torch_step * peak / flops_per_step,
            torch_step_s_rounds=torch_times,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating timed rounds")
    parser.add_argument(
        "--scan_layers",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="run the blocks under nn.scan, as the configs do (false: unrolled layers)",
    )
    parser.add_argument(
        "--scan_unroll",
        type=int,
        default=0,
        help="layers per scan iteration (config.model.scan_unroll); 0: all, no loop",
    )
    parser.add_argument("--no-torch", dest="torch", action="store_false")
    args = parser.parse_args()
    if jax.devices()[0].platform != "cpu":
        raise SystemExit("benchmarks/train_step.py measures CPU training; run with JAX on CPU")
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    details = {name: measure(name, args) for name in names}
    headline = "small" if "small" in details else names[-1]
    record = {
        "benchmark": "train_step",
        "tokens_per_s": details[headline]["tokens_per_s"],
        "mfu": details[headline]["mfu"],
        "speedup_vs_torch": details[headline].get("speedup_vs_torch"),
        "speedup_ceiling": details[headline].get("speedup_ceiling"),
        "headline_config": headline,
        "dtype": args.dtype,
        "scan_layers": args.scan_layers,
        "scan_unroll": details[headline]["scan_unroll"],
        "devices": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "peak_matmul_flops": details[headline]["peak_matmul_flops"],
        "configs": details,
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
