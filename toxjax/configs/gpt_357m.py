"""GPT ~357M: GPT-3 Medium / GPT-2 medium shape.

`python toxjax/configs/gpt_357m.py` prints the parameter count (from jax.eval_shape of the model).
"""

import ml_collections

from toxjax.configs import _gpt, default


def get_config() -> ml_collections.ConfigDict:
    return _gpt.gpt_config(
        num_layers=24,
        d_model=1024,
        num_heads=16,
        learning_rate=3e-4,
        global_batch_size=256,  # sequences of 2048 tokens per step
        remat_policy="dots_with_no_batch_dims_saveable",
        max_microbatch_per_device=32,  # sequences per chip and micro-batch (fit-checked)
    )


if __name__ == "__main__":
    default.print_size(get_config())
