"""The demo study shrunk to seconds per stage: exercises every stage, measures nothing.

For the end-to-end test (tests/study_test.py) and a quick check of an installation:
    python -m toxjax.study --config=configs/study_smoke.py --workdir=/tmp/toxjax_smoke
"""

import ml_collections

try:
    from configs import demo
except ImportError:  # run as a script: configs/ itself is on sys.path
    import demo


def get_config() -> ml_collections.ConfigDict:
    config = demo.get_config()

    model = config.model
    model.num_layers = 1
    model.d_model = 32
    model.num_heads = 2
    model.num_kv_heads = 2
    model.mlp_dim = 64
    model.vocab_size = 384  # >= the 320-piece SentencePiece vocabulary below
    model.max_len = 64

    config.data.seq_len = 64
    config.data.global_batch_size = 8  # divides the 8 host devices of the test environment

    config.optim.warmup_steps = 1
    config.train.num_steps = 3
    config.train.log_every = 1
    config.train.checkpoint_every = 2  # one mid-run checkpoint, one final
    config.train.async_checkpointing = False

    ev = config.eval
    ev.rtp_num_prompts = 6
    ev.rtp.num_samples = 2
    ev.rtp.max_new_tokens = 4
    ev.generate_batch_size = 16
    ev.utility_limit = 4
    ev.bias_limit = 4
    ev.loglik_batch_size = 16
    ev.perplexity_batches = 1
    ev.perplexity_batch_size = 8

    config.study.name = "toxjax_study_smoke"
    config.study.corpus = "demo:300"
    config.study.records_per_shard = 100
    config.study.vocab_size = 320
    return config
