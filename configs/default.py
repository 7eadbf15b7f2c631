"""Base config: every field toxjax reads, with its meaning. Size configs override parts of it."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # ---------------- model: a decoder-only transformer ----------------
    config.model = model = ml_collections.ConfigDict()
    model.num_layers = 2  # decoder blocks
    model.d_model = 128  # hidden size
    model.num_heads = 4  # query heads
    model.num_kv_heads = 4  # key/value heads (< num_heads gives grouped-query attention)
    model.head_dim = -1  # per-head size; -1 means d_model // num_heads
    model.mlp_dim = 512  # MLP hidden size (per branch for SwiGLU)
    model.vocab_size = 384  # embedding rows; >= the task vocabulary, padded for sharding
    model.max_len = 256  # longest sequence (learned position table size)
    model.norm = "layernorm"  # "layernorm" (GPT) or "rmsnorm"
    model.positions = "learned"  # "learned" (GPT) or "rope"
    model.rope_theta = 10000.0  # RoPE base frequency
    model.activation = "gelu"  # "gelu" (GPT) or "swiglu"
    model.tie_embeddings = True  # share input embedding and output projection
    model.use_bias = True  # biases in dense layers (GPT style); False for Llama style
    model.dropout_rate = 0.0  # dropout on residual branches and embeddings
    model.param_dtype = "float32"  # parameter storage dtype
    model.dtype = "bfloat16"  # activation/compute dtype
    model.scan_layers = True  # run blocks under nn.scan (one compiled block, fast compile)
    # Rematerialisation: "none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable".
    model.remat_policy = "none"

    # ---------------- mesh and sharding (MaxText vocabulary) ----------------
    config.mesh = mesh = ml_collections.ConfigDict()
    # Within a slice (ICI) sizes of the (data, fsdp, tensor) axes; one -1 per group is filled.
    mesh.ici = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # Across slices (DCN) sizes; product must equal the number of slices.
    mesh.dcn = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # Logical axis -> mesh axes, in priority order (first rule whose mesh axes are free wins).
    config.logical_axis_rules = [
        ("activation_batch", ("data", "fsdp")),
        ("activation_length", None),
        ("activation_embed", None),
        ("activation_mlp", "tensor"),
        ("activation_heads", "tensor"),
        ("activation_kv", None),
        ("activation_vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("kv", None),
        ("vocab", "tensor"),
        ("layers", None),
        ("norm", None),
        ("position", None),
    ]

    # ---------------- data ----------------
    config.data = data = ml_collections.ConfigDict()
    data.task = "toxjax_demo_inst"  # SeqIO task or mixture name
    data.split = "train"  # split read for training
    data.eval_split = "validation"  # split read for held-out loss
    data.seq_len = 128  # packed sequence length (targets)
    data.global_batch_size = 16  # sequences per optimizer step, over all hosts
    data.seed = 0  # fixes the example order: batch(step) depends only on (seed, step)
    data.num_cached_examples = -1  # packed examples materialised for indexing; -1 = all
    data.cache_dir = ""  # where packed arrays are cached; "" = WORKDIR/data_cache

    # ---------------- optimizer: AdamW, warmup then cosine ----------------
    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 3e-3  # peak learning rate
    optim.warmup_steps = 20  # linear warmup from 0
    optim.end_lr_ratio = 0.1  # cosine decays to learning_rate * end_lr_ratio at the last step
    optim.b1 = 0.9  # Adam beta1
    optim.b2 = 0.95  # Adam beta2
    optim.eps = 1e-8  # Adam epsilon
    optim.weight_decay = 0.1  # decoupled weight decay (not applied to norms and biases)
    optim.grad_clip_norm = 1.0  # global-norm clipping; <= 0 disables
    optim.grad_accum_steps = 1  # micro-batches per optimizer step
    optim.z_loss = 0.0  # weight of log(Z)^2 auxiliary loss; 0 disables

    # ---------------- training loop ----------------
    config.train = train = ml_collections.ConfigDict()
    train.num_steps = 100  # optimizer steps
    train.seed = 0  # parameter init and dropout RNG; per-step RNG is fold_in(rng, step)
    train.log_every = 10  # steps between metric logs
    train.checkpoint_every = 50  # steps between checkpoints (also saved at the end)
    train.keep_checkpoints = 3  # checkpoints kept in WORKDIR/checkpoints
    train.async_checkpointing = True  # write checkpoints in the background
    train.warm_start_from = ""  # params-only warm start from another run's checkpoint dir
    train.cpu_peak_flops = 0.0  # MFU denominator on CPU; 0 = measure a matmul at start

    return config
