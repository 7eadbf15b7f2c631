"""GPT ~357M: GPT-3 Medium / GPT-2 medium shape.

`python toxjax/configs/gpt_357m.py` prints the parameter count (from jax.eval_shape of the model).
"""

import ml_collections

from toxjax.configs import _gpt, default


def get_config() -> ml_collections.ConfigDict:
    return _gpt.gpt_config(**_gpt.SIZES["357m"]._asdict())


if __name__ == "__main__":
    default.print_size(get_config())
