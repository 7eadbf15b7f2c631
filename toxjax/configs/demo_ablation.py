"""The INST ablation on the VALIDATION prompts (defaults of toxjax/configs/demo.py are chosen here).

python -m toxjax.study --config=toxjax/configs/demo_ablation.py --workdir=/tmp/toxjax_ablation

toxjax/configs/demo.py's study with INST and MEDA at the paper reconstruction's settings, plus one
INST model per candidate cause of INST's apparent failure on real text (seen before the
evaluation's start-id fix; docs/results.md): the 0.5 threshold on this scorer's scores (a score
quantile instead), the untagged share, and wording without a shared word. Every run is evaluated
on real:validation, never on the test prompts.
"""

import ml_collections

from toxjax.configs import demo

VARIANTS = (
    "inst:threshold_quantile=0.3",  # only the cleanest 30% of documents count as non-toxic
    "inst:threshold_quantile=0.1",  # the cleanest 10% (cf. Korbak et al.: the safest ~5%)
    "inst:untagged_rate=0.1",  # 10% untagged instead of 2%
    "inst:untagged_rate=0",  # every document tagged (the paper's setup; demo.py's default)
    # Wording that shares no word between the two instructions.
    'inst:inst_toxic="The following text is offensive:";'
    'inst_nontoxic="The following text is respectful:"',
    "meda:score_precision=1",  # MEDA with one decimal: "toxicity: 0.0" ... "toxicity: 1.0"
    "meda:score_precision=1;untagged_rate=0",
)


def get_config() -> ml_collections.ConfigDict:
    config = demo.get_config()
    config.eval.rtp_prompts = "real:validation"  # choose on validation, report on test
    config.study.name = "toxjax_study_ablation"  # SeqIO task family of the ablation
    config.study.strategies = ("inst", "meda")  # the two conditioned strategies
    config.study.judge = ""  # no BASE model here to judge fluency with
    config.study.variants = VARIANTS  # one more INST model each
    config.study.threshold_quantile = -1.0  # the reconstruction's plain 0.5 threshold
    config.study.untagged_rate = 0.02  # the setting the ablation started from
    return config
