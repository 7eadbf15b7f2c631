"""Smallest config: trains on the demo INST task on CPU in about 100 steps.

Byte vocabulary (seqio.ByteVocabulary, 259 ids) padded to 384 rows so the table divides any
small mesh; 2 layers of width 128. `python configs/tiny.py` prints its parameter count.
"""

import ml_collections

try:
    from configs import default
except ImportError:  # run as a script: configs/ itself is on sys.path
    import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()

    model = config.model
    model.num_layers = 2  # two blocks: enough to exercise scan, remat and sharding
    model.d_model = 128  # hidden size
    model.num_heads = 4  # head_dim 32
    model.num_kv_heads = 4  # plain multi-head attention
    model.mlp_dim = 512  # 4 * d_model
    model.vocab_size = 384  # 259 byte ids padded to a multiple of 128
    model.max_len = 128  # = data.seq_len
    model.dtype = "float32"  # CPU has no fast bfloat16 matmul; TPU/GPU configs use bfloat16

    config.data.task = "toxjax_demo_inst"  # demo corpus, INST conditioning (toxjax.data.tasks)
    config.data.seq_len = 128  # packed sequence length
    config.data.global_batch_size = 16  # sequences per step (divides the 8 test devices)

    config.optim.learning_rate = 3e-3  # a tiny model tolerates a high peak rate
    config.optim.warmup_steps = 10  # short warmup for a 100-step run

    config.train.num_steps = 100  # a couple of minutes on 2 CPU cores
    config.train.log_every = 10  # steps between metric logs
    config.train.checkpoint_every = 50  # steps between checkpoints
    return config


if __name__ == "__main__":
    default.print_size(get_config())
