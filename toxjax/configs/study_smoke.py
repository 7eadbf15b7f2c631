"""The demo study shrunk to seconds per stage: exercises every stage, measures nothing.

For the end-to-end test (tests/study/experiment_test.py) and a quick check of an installation:
    python -m toxjax.study --config=toxjax/configs/study_smoke.py --workdir=/tmp/toxjax_smoke

Built on toxjax/configs/demo_synthetic.py; sets only what it shrinks.
"""

import ml_collections

from toxjax.configs import demo_synthetic


def get_config() -> ml_collections.ConfigDict:
    config = demo_synthetic.get_config()

    model = config.model
    model.num_layers = 1  # one block still exercises scan and sharding
    model.d_model = 32  # hidden size
    model.num_heads = 2  # query heads (head_dim 16)
    model.num_kv_heads = 2  # plain multi-head attention
    model.mlp_dim = 64  # MLP hidden size
    model.vocab_size = 384  # >= the 320-piece SentencePiece vocabulary below
    model.max_len = 64  # = data.seq_len

    config.data.seq_len = 64  # packed sequence length
    config.data.global_batch_size = 8  # divides the 8 host devices of the test environment

    config.optim.warmup_steps = 1  # warmup of a 3-step run
    config.train.num_steps = 3  # optimizer steps per strategy
    config.train.log_every = 1  # log every step
    config.train.checkpoint_every = 2  # one mid-run checkpoint, one final
    config.train.async_checkpointing = False  # finished writes when a stage returns

    ev = config.eval
    ev.rtp_num_prompts = 6  # a seeded sample of the packaged prompts
    ev.rtp.num_samples = 2  # continuations per prompt
    ev.rtp.max_new_tokens = 4  # tokens per continuation
    ev.generate_batch_size = 16  # sequences decoded together
    ev.utility_limit = 4  # examples per utility task
    ev.bias_limit = 4  # examples per bias task
    ev.loglik_batch_size = 16  # sequences scored together
    ev.perplexity_batches = 1  # held-out perplexity batches
    ev.real_text = "packaged"  # the real-text metrics too, on a few examples each
    ev.real_text_limit = 8  # documents, examples and steerability prompts per set
    ev.perplexity_batch_size = 8  # sequences per held-out batch
    ev.judge_scorer = "heldout-judge"  # the second toxicity judge, as in the demo

    config.study.judge = "base"  # fluency judge: the BASE run, as in the demo
    config.study.name = "toxjax_study_smoke"  # SeqIO task family: toxjax_study_smoke_<strategy>
    config.study.corpus = "demo:300"  # the first 300 documents of the embedded corpus
    config.study.records_per_shard = 100  # scored records per output shard
    config.study.vocab_size = 320  # pieces of the trained SentencePiece vocabulary
    # The paper's four and SEGMENT (sentence scores, control tokens after the prompt).
    config.study.strategies = ("base", "meda", "inst", "filter", "segment")
    return config
