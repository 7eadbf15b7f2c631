"""GPT ~126M: GPT-3 Small / GPT-2 small shape.

`python toxjax/configs/gpt_126m.py` prints the parameter count (from jax.eval_shape of the model).
"""

import ml_collections

from toxjax.configs import _gpt, default


def get_config() -> ml_collections.ConfigDict:
    return _gpt.gpt_config(
        num_layers=12,
        d_model=768,
        num_heads=12,
        learning_rate=6e-4,
        global_batch_size=256,  # sequences of 2048 tokens per step
        remat_policy="none",
        max_microbatch_per_device=16,  # sequences per chip and micro-batch (fit-checked)
    )


if __name__ == "__main__":
    default.print_size(get_config())
