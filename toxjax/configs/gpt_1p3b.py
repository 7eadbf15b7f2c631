"""GPT ~1.3B: the paper's main size (24 layers, hidden 2048, seq 2048).

`python toxjax/configs/gpt_1p3b.py` prints the parameter count (from jax.eval_shape of the model).
"""

import ml_collections

from toxjax.configs import _gpt, default


def get_config() -> ml_collections.ConfigDict:
    return _gpt.gpt_config(**_gpt.SIZES["1p3b"]._asdict())


if __name__ == "__main__":
    default.print_size(get_config())
