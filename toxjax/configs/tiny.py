"""Smallest config: trains on the demo INST task on CPU in about 100 steps.

The model, data and training loop of toxjax/configs/default.py already are this size: byte
vocabulary (seqio.ByteVocabulary, 259 ids) padded to 384 rows so the table divides any small mesh,
2 layers of width 128, the demo INST task, batches of 16 (divide the 8 test devices), 100 steps (a
couple of minutes on 2 CPU cores). `python toxjax/configs/tiny.py` prints its parameter count.
"""

import ml_collections

from toxjax.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.max_len = 128  # = data.seq_len: no unused position rows
    config.model.dtype = "float32"  # CPU has no fast bfloat16 matmul; TPU/GPU configs use bfloat16
    config.optim.warmup_steps = 10  # short warmup for a 100-step run
    return config


if __name__ == "__main__":
    default.print_size(get_config())
