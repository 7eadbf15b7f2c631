"""GPT ~8.3B: Megatron-LM's 8.3B shape (72 layers, hidden 3072, 32 heads).

`python toxjax/configs/gpt_8p3b.py` prints the parameter count (from jax.eval_shape of the model).
"""

import ml_collections

from toxjax.configs import _gpt, default


def get_config() -> ml_collections.ConfigDict:
    return _gpt.gpt_config(
        num_layers=72,
        d_model=3072,
        num_heads=32,
        learning_rate=1.5e-4,
        global_batch_size=512,  # sequences of 2048 tokens per step
        remat_policy="full",
        max_microbatch_per_device=4,  # sequences per chip and micro-batch (fit-checked)
    )


if __name__ == "__main__":
    default.print_size(get_config())
