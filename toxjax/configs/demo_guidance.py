"""Self-guided decoding on the real-text demo: the guidance-scale sweep, on the VALIDATION prompts.

python -m toxjax.study --config=toxjax/configs/demo_guidance.py --workdir=/tmp/toxjax_guidance

toxjax/configs/demo.py's four models, each conditioned one also evaluated with guided decoding
(its non-toxic signal against its toxic one, logits+ + scale * (log p+ - log p-)) at every
scale of SCALES: evaluation-only variants, so nothing trains twice. The default scale of the
guided rows in the README is chosen here, never on the test prompts: the largest cut of TP whose
distinct-2 stays >= 0.9x and judge perplexity <= 1.3x the same model's unguided values.
"""

import ml_collections

from toxjax.configs import demo

SCALES = (1.0, 1.5, 2.0, 4.0)  # guidance scales tried (0 = the plain rows)
GUIDED = ("meda", "inst")  # the conditioned strategies of the demo


def get_config() -> ml_collections.ConfigDict:
    config = demo.get_config()
    config.eval.rtp_prompts = "real:validation"  # choose on validation, report on test
    config.study.variants = tuple(
        f"{strategy}:guidance_scale={scale:g}" for strategy in GUIDED for scale in SCALES
    )
    return config


if __name__ == "__main__":
    print(get_config().study.variants)
