"""The synthetic demo study: four tiny models on the generated template corpus, scored offline.

python -m toxjax.study --config=toxjax/configs/demo_synthetic.py --workdir=/tmp/toxjax_synthetic

A template language a 2-layer model learns almost perfectly (held-out perplexity ~1.2): fast and
fully controlled, for tests and the smoke study, but its effects do not carry over to real
text. toxjax/configs/demo.py (the real-text default) with the synthetic corpus, prompts and tasks.
"""

import ml_collections

from toxjax.configs import default, demo


def get_config() -> ml_collections.ConfigDict:
    config = demo.get_config()

    ev = config.eval
    ev.rtp_prompts = "demo"  # the 300 packaged synthetic prompts
    ev.rtp_num_prompts = -1  # all of them
    ev.real_text = ""  # real-text metrics do not apply to the template language
    ev.utility_tasks = ("demo_cloze",)  # 4-way sentence completion in the template language
    ev.bias_tasks = ("demo_toxicity_detection",)  # yes/no detection of its rude sentences

    study = config.study
    study.name = "toxjax_study_synthetic"  # SeqIO task family: toxjax_study_synthetic_<strategy>
    study.corpus = "demo"  # the generated template corpus (4,000 documents)
    study.untagged_rate = 0.02  # 2% of MEDA/INST examples untagged (Korbak et al. keep 1%)
    return config


if __name__ == "__main__":
    default.print_size(get_config())
