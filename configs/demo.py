"""The offline demo study: four tiny models on the embedded corpus, scored offline.

python -m toxjax.study --config=configs/demo.py --workdir=/tmp/toxjax_demo

The model (2 layers of width 128), batches (16 x 128 tokens) and evaluation (packaged RTP
prompts, 25 samples each, demo utility and bias tasks, the offline scorer) are configs/default.py's.
"""

import ml_collections

from configs import _study, default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()

    model = config.model
    model.scan_unroll = 2  # no loop over so few layers: ~1.2x faster on CPU
    model.vocab_size = 768  # = study.vocab_size: the SentencePiece vocabulary trained below
    model.max_len = 128  # = data.seq_len: no unused position rows
    model.dtype = "float32"  # CPU has no fast bfloat16 matmul

    config.optim.learning_rate = 6e-3  # peak rate, high for a tiny model and a short run

    config.train.num_steps = 800  # per strategy
    config.train.log_every = 50  # steps between metric logs
    config.train.checkpoint_every = 400  # steps between checkpoints

    config.eval.perplexity_batches = 2  # held-out perplexity batches: a quick estimate

    config.study = _study.study_section(
        name="toxjax_study_demo", corpus="demo", scorer="offline", vocabulary="spm", vocab_size=768
    )
    config.study.untagged_rate = 0.02  # 2% of MEDA/INST examples untagged (Korbak et al. keep 1%)
    return config


if __name__ == "__main__":
    default.print_size(get_config())
