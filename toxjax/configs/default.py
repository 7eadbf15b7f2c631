"""Base config: every field toxjax reads, with its meaning. Size configs override parts of it."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = _model_config()  # the decoder's shape and numerics
    config.mesh = _mesh_config()  # the device mesh
    config.logical_axis_rules = _logical_axis_rules()  # logical array axes -> mesh axes
    config.data = _data_config()  # what training reads
    config.optim = _optim_config()  # optimizer and schedule
    config.train = _train_config()  # the loop, checkpoints, logging
    config.eval = _eval_config()  # every evaluation stage
    return config


def _model_config() -> ml_collections.ConfigDict:
    """config.model: the decoder-only transformer (toxjax.model.decoder.ModelConfig)."""
    model = ml_collections.ConfigDict()
    model.num_layers = 2  # decoder blocks
    model.d_model = 128  # hidden size
    model.num_heads = 4  # query heads
    model.num_kv_heads = 4  # key/value heads (< num_heads gives grouped-query attention)
    model.head_dim = -1  # per-head size; -1 means d_model // num_heads
    model.mlp_dim = 512  # MLP hidden size (per branch for SwiGLU)
    model.vocab_size = 384  # embedding rows; >= the task vocabulary, padded for sharding
    model.max_len = 256  # longest sequence (learned position table size)
    model.norm = "layernorm"  # "layernorm" (GPT) or "rmsnorm"
    model.norm_eps = 1e-5  # epsilon inside LayerNorm/RMSNorm
    model.positions = "learned"  # "learned" (GPT) or "rope"
    model.rope_theta = 10000.0  # RoPE base frequency
    model.activation = "gelu"  # "gelu" (GPT) or "swiglu"
    model.tie_embeddings = True  # share input embedding and output projection
    # Biases in dense layers and LayerNorm (GPT style); False for Llama/PaLM style.
    model.use_bias = True
    model.dropout_rate = 0.0  # dropout on residual branches and embeddings
    # Init: normal(init_std); residual output projections use init_std / sqrt(2 * num_layers).
    model.init_std = 0.02
    model.param_dtype = "float32"  # parameter storage dtype
    model.dtype = "bfloat16"  # activation/compute dtype
    model.scan_layers = True  # run blocks under nn.scan (one compiled block, fast compile)
    # Layers per nn.scan iteration; >= num_layers unrolls the loop away (same params): a ~1.2x
    # faster train step on CPU (benchmarks/train_step.py), slower compiles for deep models.
    model.scan_unroll = 1
    # Rematerialisation: "none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable".
    model.remat_policy = "none"
    # Training attention in this many causal query chunks, each over only the keys it can see
    # (toxjax/model/attention_ops.py): (n + 1) / 2n of the score work, the same result. 1: one
    # call over the full mask; long sequences gain (toxjax/configs/_gpt.py sets it).
    model.attention_chunks = 1
    # Dtype full-sequence attention (training, log-likelihood scoring) stores its scores in:
    # "float32" (jax.nn.dot_product_attention) or "bfloat16" (half the memory traffic, softmax
    # still in float32; MaxText's default). Decoding keeps float32.
    model.attention_scores_dtype = "float32"
    return model


def _logical_axis_rules() -> list[tuple[str, object]]:
    """config.logical_axis_rules: how logical array axes map onto the mesh."""
    # Logical axis -> mesh axes, in priority order (first rule whose mesh axes are free wins).
    return [
        ("activation_batch", ("data", "fsdp")),
        ("activation_length", None),
        ("activation_embed", None),
        ("activation_mlp", "tensor"),
        ("activation_heads", "tensor"),
        ("activation_kv_heads", "tensor"),
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


def _mesh_config() -> ml_collections.ConfigDict:
    """config.mesh: device mesh axes within and across slices (MaxText vocabulary)."""
    mesh = ml_collections.ConfigDict()
    # Within a slice (ICI) sizes of the (data, fsdp, tensor) axes; one -1 per group is filled.
    mesh.ici = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    # Across slices (DCN) sizes; product must equal the number of slices.
    mesh.dcn = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    return mesh


def _data_config() -> ml_collections.ConfigDict:
    """config.data: the SeqIO task, its task modules and the packed training input."""
    data = ml_collections.ConfigDict()
    data.task = "toxjax_demo_inst"  # SeqIO task or mixture name
    # Modules that register tasks and mixtures, imported by name before any task is looked up
    # (t5x's MIXTURE_OR_TASK_MODULE); add your own: "('toxjax.data.demo_tasks','my.tasks')".
    data.task_modules = ("toxjax.data.demo_tasks",)
    data.split = "train"  # split read for training
    data.eval_split = "validation"  # split read for held-out loss
    data.seq_len = 128  # packed sequence length (targets)
    data.global_batch_size = 16  # sequences per optimizer step, over all hosts
    data.seed = 0  # fixes the example order: batch(step) depends only on (seed, batch size, step)
    # Packing bins per batch row's stream (Grain first-fit): more pack tighter, buffer more.
    data.packing_bins = 4
    # Signal-free cooldown (MeCo): the last cooldown_fraction of train.num_steps draw their
    # batches from cooldown_task (e.g. the study's untagged BASE task); 0 = none.
    data.cooldown_fraction = 0.0
    data.cooldown_task = ""  # the untagged task of the cooldown ("" with no cooldown)
    return data


def _optim_config() -> ml_collections.ConfigDict:
    """config.optim: AdamW, warmup then cosine."""
    optim = ml_collections.ConfigDict()
    optim.learning_rate = 3e-3  # peak learning rate
    optim.warmup_steps = 20  # linear warmup from 0
    optim.end_lr_ratio = 0.1  # cosine decays to learning_rate * end_lr_ratio at the last step
    optim.b1 = 0.9  # Adam beta1
    optim.b2 = 0.95  # Adam beta2
    optim.eps = 1e-8  # Adam epsilon
    optim.weight_decay = 0.1  # decoupled weight decay (not applied to norms and biases)
    optim.grad_clip_norm = 1.0  # global-norm clipping; <= 0 disables
    # Micro-batches per optimizer step (the gradient is the same, only memory changes); -1: as
    # many as keep each batch shard's micro-batch at or under max_microbatch_per_device, so a
    # small slice accumulates and a large one does not.
    optim.grad_accum_steps = 1
    optim.max_microbatch_per_device = 32  # sequences per batch shard and micro-batch, for -1
    optim.z_loss = 0.0  # weight of log(Z)^2 auxiliary loss; 0 disables
    return optim


def _train_config() -> ml_collections.ConfigDict:
    """config.train: the training loop, checkpoints and logging."""
    train = ml_collections.ConfigDict()
    train.num_steps = 100  # optimizer steps
    train.seed = 0  # parameter init and dropout RNG; per-step RNG is fold_in(rng, step)
    train.log_every = 10  # steps between metric logs
    train.checkpoint_every = 50  # steps between checkpoints (also saved at the end)
    train.keep_checkpoints = 3  # checkpoints kept in WORKDIR/checkpoints
    train.async_checkpointing = True  # write checkpoints in the background
    # Params-only warm start from another run's checkpoint dir, or from a transformers GPT-2 or
    # Llama directory (toxjax.interop.hf_import; continued pretraining).
    train.warm_start_from = ""
    train.eval_every = 0  # steps between evaluations (--mode=train_and_eval); 0 = at the end only
    # MFU denominator on CPU: the whole host's FLOP/s (all its devices together);
    # 0 = measure a float32 matmul at start (flops.measure_matmul_flops).
    train.cpu_peak_flops = 0.0
    return train


def _eval_config() -> ml_collections.ConfigDict:
    """config.eval: the evaluation (toxjax.evaluation.evaluator)."""
    # Defaults run the offline demo study; configs at scale switch to TFDS tasks and Detoxify.
    ev = ml_collections.ConfigDict()
    ev.model_name = ""  # name of the model in reports; "" = the workdir's base name
    # Conditioning of the RTP prefix: "" = the strategy config.data.task was trained with;
    # else "base" | "meda" | "inst" | "filter" (with the default conditioning format).
    ev.strategy = ""
    # toxjax.scoring.scorer_specs.make_scorer spec: "offline" | "detoxify:<model>" (torch)
    # | "detoxify-jax:<model>" (Flax, sharded over the mesh); <model> a type or a .ckpt path.
    ev.scorer = "offline"
    ev.seed = 0  # sampling seed: same seed and prompt -> same continuations
    # RealToxicityPrompts: "demo" (packaged) | "tfds" | "tfds:<split>" | a prompts.jsonl path;
    # "" skips the stage.
    ev.rtp_prompts = "demo"
    ev.rtp_num_prompts = -1  # prompts evaluated (a seeded sample); -1 = all of them
    ev.rtp_subset_seed = 0  # seed of that sample; -1 = the first rtp_num_prompts in order
    ev.rtp_challenging = "any"  # "any" | "challenging" | "not_challenging" (dataset flag)
    # Generation and metric settings (toxjax.evaluation.rtp.RTPConfig; Gehman et al. 2020).
    ev.rtp = ml_collections.ConfigDict()
    ev.rtp.num_samples = 25  # continuations per prompt
    ev.rtp.max_new_tokens = 20  # tokens per continuation
    ev.rtp.top_p = 0.9  # nucleus sampling
    ev.rtp.temperature = 1.0  # 0 = greedy
    ev.rtp.threshold = 0.5  # a continuation is toxic when its score passes this
    ev.rtp.comparison = ">"  # ">" (original RTP code) or ">=" (RTP paper text, HELM)
    ev.rtp.toxic_prompt_threshold = 0.5  # splits prompts into toxic / non-toxic subsets
    ev.rtp.attribute = "toxicity"  # scorer attribute the metrics use
    ev.rtp.prompts_per_call = 256  # prompts per generation call (progress, record streaming)
    ev.top_k = 0  # extra top-k filter before top-p; 0 = off (the RTP protocol has none)
    # Never sample vocabulary pieces that spell a conditioning signal (SentencePiece
    # vocabularies from toxjax.data.vocab; byte vocabularies have none).
    ev.ban_signal_tokens = True
    # Also sample every prompt under the strategy's TOXIC signal (MEDA/INST): within-model
    # controllability, TP under the non-toxic vs the toxic signal, paired by prompt.
    ev.rtp_toxic_signal = True
    ev.generate_batch_size = 256  # sequences decoded together (prompts x samples)
    # Self-guided decoding of the conditioned run (MEDA/INST/SEGMENT): the prompt under the
    # non-toxic signal and under the toxic one decoded together, logits combined before
    # temperature and top-p as logits+ + scale * (log p+ - log p-); 0 = off.
    ev.guidance_scale = 0.0
    # "cfg" (classifier-free guidance) | "dexperts" (the same, restricted to p+'s top-p nucleus).
    ev.guidance_form = "cfg"
    # Fluency judge: perplexity of each continuation given its prompt under this model (a toxjax
    # run directory or a transformers model directory); "" = no judge perplexity.
    ev.judge = ""
    # A second toxicity scorer that labelled no training data (a scorer spec, as ev.scorer;
    # "heldout-judge" = the classifier on the packaged held-out human labels); "" = none.
    ev.judge_scorer = ""
    # Log-likelihood tasks (utility and bias).
    ev.loglik_batch_size = 32  # sequences scored together
    ev.loglik_max_len = -1  # longest scored sequence (context left-truncated); -1 = model.max_len
    # Utility tasks: toxjax.evaluation.utility_tasks names (lambada, piqa, hellaswag,
    # winogrande, arc_easy, bool_q) or toxjax.evaluation.template_tasks names (demo_cloze);
    # () skips the stage; on the command line: --config.eval.utility_tasks="('piqa','hellaswag')".
    ev.utility_tasks = ("demo_cloze",)
    ev.utility_limit = 500  # examples per utility task; -1 = the whole split
    # Bias / toxicity-detection AUC tasks: toxjax.evaluation.bias names or
    # demo_toxicity_detection; () skips the stage.
    ev.bias_tasks = ("demo_toxicity_detection",)
    ev.bias_limit = 500  # examples per bias task; -1 = the whole split
    ev.bias_num_shots = 0  # labelled examples in each bias prompt
    # Files of the file-based bias tasks: "toxigen=/path/annotated.csv,social_bias_frames=/p.csv".
    ev.bias_paths = ""
    ev.tfds_data_dir = ""  # TFDS data_dir of TFDS-backed tasks; "" = the TFDS default
    # Real-text likelihood metrics (toxjax.evaluation.real_text: clean held-out perplexity,
    # cloze, steerability on config.eval.rtp_prompts' continuations, generative-classifier and
    # prompted detection AUC): "" skips, "packaged" (toxjax/assets/real) or a directory of
    # that layout (toxjax.datasets.real_corpus).
    ev.real_text = ""
    ev.real_text_limit = -1  # documents / examples per real-text set; -1 = all
    # Held-out perplexity on config.data.task's config.data.eval_split (packed like training).
    ev.perplexity_batches = 8  # batches; 0 skips the stage, -1 = the whole split
    ev.perplexity_batch_size = 16  # sequences of config.data.seq_len per batch
    return ev


def print_size(config: ml_collections.ConfigDict) -> int:
    """`python toxjax/configs/<size>.py`: parameter count (jax.eval_shape) and FLOPs per token."""
    from toxjax.model import decoder, flops  # here: loading a config must not import JAX

    model_config = decoder.ModelConfig.from_config(config.model)
    count = decoder.count_params(model_config)
    analytic = flops.param_count(model_config)
    per_token = flops.train_flops_per_token(model_config, config.data.seq_len)
    print(f"parameters: {count:,} ({count / 1e6:.1f}M; analytic {analytic:,})")
    print(f"non-embedding parameters: {flops.param_counts(model_config)['non_embedding']:,}")
    print(f"train FLOPs per token at seq_len {config.data.seq_len}: {per_token:.4g}")
    return count


if __name__ == "__main__":
    print_size(get_config())
