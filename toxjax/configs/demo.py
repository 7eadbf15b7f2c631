"""The real-text demo study (the README's first command): four tiny models on real text.

python -m toxjax.study --config=toxjax/configs/demo.py --workdir=/tmp/toxjax_demo

Corpus: toxjax/assets/real (built by toxjax.datasets.real_corpus from the raw source files named
in its ATTRIBUTION.md): ~87k human-written documents, toxic (tweets, Civil Comments, ParaDetox's
toxic sentences) and clean (Wikipedia talk comments, ParaDetox paraphrases, book paragraphs),
scored offline. Evaluation on held-out real text: RealToxicityPrompts test prompts with their real
continuations, clean held-out documents, book cloze, human-labelled detection sets.
Defaults were chosen on the validation prompts (toxjax/configs/demo_ablation.py); reports use the
test prompts. The model is toxjax/configs/default.py's (2 layers of width 128).
"""

import ml_collections

from toxjax.configs import _study, default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()

    model = config.model
    model.scan_unroll = 2  # no loop over so few layers: ~1.2x faster on CPU
    model.vocab_size = 768  # = study.vocab_size: the SentencePiece vocabulary trained below
    model.max_len = 128  # = data.seq_len: no unused position rows
    model.dtype = "float32"  # CPU has no fast bfloat16 matmul

    config.optim.learning_rate = 6e-3  # peak rate, high for a tiny model and a short run

    config.train.num_steps = 800  # per model (~1.6M tokens)
    config.train.log_every = 50  # steps between metric logs
    config.train.checkpoint_every = 400  # steps between checkpoints

    ev = config.eval
    ev.rtp_prompts = "real:test"  # packaged RTP test prompts (validation: "real:validation")
    ev.rtp_num_prompts = 400  # sampled prompts (a seeded sample); steerability uses them all
    ev.real_text = "packaged"  # held-out real text: perplexity, cloze, steerability, detection
    ev.utility_tasks = ()  # the template cloze does not apply; real_text has a real one
    ev.bias_tasks = ()  # detection is real_text's, on human labels
    ev.perplexity_batches = 2  # each model's own (conditioned) held-out text: a quick check

    config.study = _study.study_section(
        name="toxjax_study_real", corpus="real", scorer="offline", vocabulary="spm", vocab_size=768
    )
    # Every MEDA/INST document tagged (the paper's setup). On the validation prompts
    # (toxjax/configs/demo_ablation.py) INST's TP under its non-toxic instruction, relative to its
    # toxic one, was -42% with none untagged, -46% with 2% and -40% with 10%: within the
    # run-to-run variation (the same setting gave -54% in another run), so the paper's stays.
    config.study.untagged_rate = 0.0
    # Fluency: every run's continuations scored by the BASE model of seed 0 (the same judge for
    # all; at this scale it only separates broken text from text like the corpus).
    config.study.judge = "base"
    # The second toxicity judge: trained on held-out human labels, it labelled no training data.
    ev.judge_scorer = "heldout-judge"
    return config


if __name__ == "__main__":
    default.print_size(get_config())
