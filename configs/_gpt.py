"""Shared settings of the paper's GPT family (Megatron-style, as in Prabhumoye et al. 2023).

Learned positions, GELU, LayerNorm, biases, tied embeddings, GPT-2 BPE vocabulary padded to
51200 (a multiple of 128 * 8 * 50, Megatron's padding), sequence length 2048. Each size file
sets depth, width and heads; optimizer values follow GPT-3 (Brown et al. 2020, Table 2.1).
"""

import ml_collections

try:
    from configs import default
except ImportError:  # run as a script: configs/ itself is on sys.path
    import default


def gpt_config(
    *,
    num_layers: int,
    d_model: int,
    num_heads: int,
    learning_rate: float,
    global_batch_size: int,
    remat_policy: str,
) -> ml_collections.ConfigDict:
    config = default.get_config()

    model = config.model
    model.num_layers = num_layers  # decoder blocks
    model.d_model = d_model  # hidden size
    model.num_heads = num_heads  # query heads
    model.num_kv_heads = num_heads  # multi-head attention, as in GPT/Megatron
    model.head_dim = -1  # d_model // num_heads
    model.mlp_dim = 4 * d_model  # GPT MLP ratio
    model.vocab_size = 51200  # GPT-2 BPE (50257) padded for sharding, as Megatron does
    model.max_len = 2048  # learned position table
    model.norm = "layernorm"
    model.positions = "learned"
    model.activation = "gelu"
    model.tie_embeddings = True
    model.use_bias = True
    model.dropout_rate = 0.0  # no dropout for single-epoch pretraining
    model.param_dtype = "float32"  # float32 master weights
    model.dtype = "bfloat16"  # bfloat16 compute on TPU/GPU
    model.scan_layers = True
    model.remat_policy = remat_policy  # activation memory vs recompute

    # Fully sharded data parallel over every device of a slice, data parallel across slices.
    config.mesh.ici = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
    config.mesh.dcn = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    # Placeholder name of a user-registered task (toxjax.data.tasks.register_toxicity_tasks over a
    # scored C4/Pile-like corpus, INST strategy); the study issue wires real corpora.
    config.data.task = "c4_noclean_inst"
    config.data.seq_len = 2048  # Megatron/GPT-3 context
    config.data.global_batch_size = global_batch_size  # sequences per step

    config.optim.learning_rate = learning_rate  # GPT-3 Table 2.1 peak rate for this size
    config.optim.warmup_steps = 2000
    config.optim.end_lr_ratio = 0.1  # GPT-3 decays to 10% of the peak
    config.optim.weight_decay = 0.1
    config.optim.grad_clip_norm = 1.0

    config.train.num_steps = 300_000  # about 300B tokens at 1M tokens per step for 1.3B
    config.train.log_every = 100
    config.train.checkpoint_every = 2000
    config.train.cpu_peak_flops = 0.0

    # Evaluation at scale (the paper's protocol) instead of the offline demo stages.
    ev = config.eval
    ev.rtp_prompts = "tfds"  # RealToxicityPrompts from TFDS (all 99,442 prompts)
    ev.scorer = "detoxify:original"  # Detoxify stands in for the Perspective API
    # Utility: toxjax.evaluation.utility_tasks names, zero-shot log-likelihood tasks.
    ev.utility_tasks = ("lambada", "piqa", "hellaswag", "winogrande", "arc_easy")
    # Toxicity-detection AUC: toxjax.evaluation.bias TFDS tasks (no files needed).
    ev.bias_tasks = ("civil_comments", "civil_comments_identities", "wikipedia_toxicity")
    ev.generate_batch_size = 2048  # decoded rows per call: fills an accelerator slice
    return config
