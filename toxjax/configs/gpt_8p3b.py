"""GPT ~8.3B: Megatron-LM's 8.3B shape (72 layers, hidden 3072, 32 heads).

`python toxjax/configs/gpt_8p3b.py` prints the parameter count (from jax.eval_shape of the model).
"""

import ml_collections

from toxjax.configs import _gpt, default


def get_config() -> ml_collections.ConfigDict:
    return _gpt.gpt_config(**_gpt.SIZES["8p3b"]._asdict())


if __name__ == "__main__":
    default.print_size(get_config())
