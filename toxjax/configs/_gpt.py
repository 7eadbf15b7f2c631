"""Shared settings of the paper's GPT family (Megatron-style, as in Prabhumoye et al. 2023).

Learned positions, GELU, LayerNorm, biases, tied embeddings, no dropout, float32 parameters and
bfloat16 compute, scanned layers: toxjax/configs/default.py's model already is this GPT style
(tests/configs_test.py checks it stays so). Set here: GPT-2 BPE vocabulary padded to 51200 (a
multiple of 128 * 8 * 50, Megatron's padding), sequence length 2048, FSDP, the evaluation at
scale. SIZES sets each size's depth, width and heads (gpt_<size>.py picks one); optimizer values
follow GPT-3 (Brown et al. 2020, Table 2.1), whose weight decay, clipping and 10% final rate
are the defaults too.
"""

from typing import NamedTuple

import ml_collections

from toxjax.configs import default

# Utility: toxjax.evaluation.utility_tasks names, zero-shot log-likelihood tasks.
UTILITY_TASKS = ("lambada", "piqa", "hellaswag", "winogrande", "arc_easy")
# Toxicity-detection AUC: toxjax.evaluation.bias TFDS tasks (no files needed).
BIAS_TASKS = ("civil_comments", "civil_comments_identities", "wikipedia_toxicity")


class Size(NamedTuple):
    """What differs between the sizes: the arguments of `gpt_config`."""

    num_layers: int  # decoder blocks
    d_model: int  # hidden size
    num_heads: int  # query heads
    learning_rate: float  # GPT-3 Table 2.1 peak rate for this size
    global_batch_size: int  # sequences of 2048 tokens per step
    remat_policy: str  # activation memory vs recompute
    max_microbatch_per_device: int  # sequences per chip and micro-batch (fit-checked)


# The gpt_<size>.py configs: GPT-3's Small and Medium shapes, the paper's 1.3B, Megatron-LM's 8.3B.
SIZES = {
    "126m": Size(12, 768, 12, 6e-4, 256, "none", 16),
    "357m": Size(24, 1024, 16, 3e-4, 256, "dots_with_no_batch_dims_saveable", 32),
    "1p3b": Size(24, 2048, 16, 2e-4, 512, "dots_with_no_batch_dims_saveable", 32),
    "8p3b": Size(72, 3072, 32, 1.5e-4, 512, "full", 4),
}


def gpt_config(
    *,
    num_layers: int,
    d_model: int,
    num_heads: int,
    learning_rate: float,
    global_batch_size: int,
    remat_policy: str,
    max_microbatch_per_device: int,
) -> ml_collections.ConfigDict:
    config = default.get_config()

    model = config.model
    model.num_layers = num_layers  # decoder blocks
    model.d_model = d_model  # hidden size
    model.num_heads = num_heads  # query heads
    model.num_kv_heads = num_heads  # multi-head attention, as in GPT/Megatron
    model.mlp_dim = 4 * d_model  # GPT MLP ratio
    model.vocab_size = 51200  # GPT-2 BPE (50257) padded for sharding, as Megatron does
    model.max_len = 2048  # learned position table
    model.remat_policy = remat_policy  # activation memory vs recompute
    # Attention at sequence 2048 is memory-bound on TPU: scores stored in bfloat16 and 4 causal
    # query chunks cut the 1.3B step's projected time on v5p by 15% (README, TPU slices).
    model.attention_scores_dtype = "bfloat16"
    model.attention_chunks = 4

    # Fully sharded data parallel over every device of a slice (data parallel across slices,
    # the default of mesh.dcn).
    config.mesh.ici.data = 1  # no pure data parallelism within a slice
    config.mesh.ici.fsdp = -1  # parameters and batch sharded over all of the slice's devices

    # Placeholder name of a user-registered task (toxjax.data.tasks.register_toxicity_tasks over a
    # scored C4/Pile-like corpus, INST strategy); the study issue wires real corpora.
    config.data.task = "c4_noclean_inst"
    config.data.seq_len = 2048  # Megatron/GPT-3 context
    config.data.global_batch_size = global_batch_size  # sequences per step

    config.optim.learning_rate = learning_rate  # GPT-3 Table 2.1 peak rate for this size
    config.optim.warmup_steps = 2000  # linear warmup steps at this scale
    # Accumulate gradients when a slice is too small for the batch: micro-batches of at most
    # this many sequences per chip (the fit check's measured size; a large slice needs none).
    config.optim.grad_accum_steps = -1
    config.optim.max_microbatch_per_device = max_microbatch_per_device

    config.train.num_steps = 300_000  # about 300B tokens at 1M tokens per step for 1.3B
    config.train.log_every = 100  # steps between metric logs
    config.train.checkpoint_every = 2000  # steps between checkpoints

    # Evaluation at scale (the paper's protocol) instead of the offline demo stages.
    ev = config.eval
    ev.rtp_prompts = "tfds"  # RealToxicityPrompts from TFDS (all 99,442 prompts)
    # Detoxify stands in for the Perspective API; its Flax port scores on the run's own mesh.
    ev.scorer = "detoxify-jax:original"
    ev.utility_tasks = UTILITY_TASKS  # zero-shot log-likelihood tasks
    ev.bias_tasks = BIAS_TASKS  # toxicity-detection AUC
    ev.generate_batch_size = 2048  # decoded rows per call: fills an accelerator slice
    return config
