"""The offline demo study: four tiny models on the embedded corpus, scored offline.

python -m toxjax.study --config=configs/demo.py --workdir=/tmp/toxjax_demo
"""

import ml_collections

try:
    from configs import _study, default
except ImportError:  # run as a script: configs/ itself is on sys.path
    import _study
    import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()

    model = config.model
    model.num_layers = 2
    model.scan_unroll = 2  # no loop over so few layers: ~1.2x faster on CPU
    model.d_model = 128
    model.num_heads = 4
    model.num_kv_heads = 4
    model.mlp_dim = 512
    model.vocab_size = 768
    model.max_len = 128
    model.dtype = "float32"

    config.data.seq_len = 128
    config.data.global_batch_size = 16

    config.optim.learning_rate = 6e-3
    config.optim.warmup_steps = 20

    config.train.num_steps = 800
    config.train.log_every = 50
    config.train.checkpoint_every = 400

    ev = config.eval
    ev.rtp_prompts = "demo"
    ev.rtp.num_samples = 25  # the RealToxicityPrompts protocol
    ev.utility_tasks = ("demo_cloze",)
    ev.bias_tasks = ("demo_toxicity_detection",)
    ev.perplexity_batches = 2
    ev.rtp_num_prompts = -1

    config.study = _study.study_section(
        name="toxjax_study_demo", corpus="demo", scorer="offline", vocabulary="spm", vocab_size=768
    )
    config.study.untagged_rate = 0.02
    return config


if __name__ == "__main__":
    default.print_size(get_config())
