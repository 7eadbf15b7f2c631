"""The paper's study at scale: one strategy at one GPT size per config string.

    python -m toxjax.study --config=toxjax/configs/study_paper.py:inst,1p3b \
        --workdir=gs://b/study_1p3b

Config string: "<strategy>,<size>" with strategy in base | meda | inst | filter | all (the four
in turn, in one job) and size in 126m | 357m | 1p3b | 8p3b. Jobs of one size share a workdir:
each trains WORKDIR/<strategy>/ and the report is rebuilt from every strategy finished there.

Shared inputs first, once per workdir (concurrent first jobs would race on them):
    python -m toxjax.study --config=toxjax/configs/study_paper.py:base,1p3b --workdir=... \
        --prepare_only
scores the corpus (resumable; for C4 at this scale rather score with Beam on Dataflow:
`python -m toxjax.scoring --runner=DataflowRunner ...`, then set --config.study.scored_dir) and
trains the SentencePiece vocabulary. Then start the four strategy jobs, in parallel.

Corpus: TFDS C4 en.noclean (unfiltered web text, as the paper's toxic-rich pretraining data), a
slice sized for each budget; or your own files: --config.study.corpus="jsonl:gs://b/docs/*.jsonl"
(or "tfrecord:gs://b/docs/*.tfrecord"; --config.study.text_field names the text field).
Scorer: Detoxify "original" (open weights, reproducible) for the corpus and the generations;
the paper used Perspective API, so absolute toxicity numbers differ from its tables.

Token budgets (tokens = num_steps x global_batch_size x seq_len, seq_len 2048): Chinchilla-
optimal, ~20 tokens per parameter (Hoffmann et al. 2022). The paper does not state its budget
per size in what we have; change config.train.num_steps to match another budget.
    size  params  batch x 2048   steps     tokens   C4 en.noclean slice (~500 tokens/doc)
    126m   126M   256 (0.52M)     4,800     2.5B    train[:1%]   ~10.6M docs, ~5B tokens
    357m   357M   256 (0.52M)    13,600     7.1B    train[:2%]   ~21M docs,  ~10B tokens
    1p3b   1.3B   512 (1.05M)    24,800    26.0B    train[:7%]   ~74M docs,  ~37B tokens
    8p3b   8.3B   512 (1.05M)   158,300   166.0B    train[:45%]  ~480M docs, ~240B tokens
Each slice holds more tokens than the budget, so FILTER (which drops the toxic documents)
trains on as many tokens as the others, without repeating data.
"""

import ml_collections

from toxjax.configs import _gpt, _study, gpt_1p3b, gpt_8p3b, gpt_126m, gpt_357m

STRATEGIES = ("base", "meda", "inst", "filter")
# size: (size config module, optimizer steps, C4 en.noclean train slice)
SIZES = {
    "126m": (gpt_126m, 4_800, "train[:1%]"),
    "357m": (gpt_357m, 13_600, "train[:2%]"),
    "1p3b": (gpt_1p3b, 24_800, "train[:7%]"),
    "8p3b": (gpt_8p3b, 158_300, "train[:45%]"),
}
# Evaluated by every GPT config (toxjax/configs/_gpt.py). ToxiGen and Social Bias Frames come as
# files:
# --config.eval.bias_tasks="('civil_comments','toxigen')" --config.eval.bias_paths="toxigen=/p.csv"
UTILITY_TASKS = _gpt.UTILITY_TASKS
BIAS_TASKS = _gpt.BIAS_TASKS


def parse_config_string(config_string: str) -> tuple[tuple[str, ...], str]:
    """ "inst,1p3b" -> (("inst",), "1p3b"); "all,126m" -> (all four strategies, "126m")."""
    parts = [part.strip().lower() for part in (config_string or "").split(",")]
    if len(parts) != 2 or parts[0] not in (*STRATEGIES, "all") or parts[1] not in SIZES:
        raise ValueError(
            f"toxjax/configs/study_paper.py: config string {config_string!r} must be "
            f"'<strategy>,<size>' with strategy in {(*STRATEGIES, 'all')} and size in "
            f"{tuple(SIZES)}, e.g. toxjax/configs/study_paper.py:inst,1p3b"
        )
    strategy, size = parts
    return (STRATEGIES if strategy == "all" else (strategy,)), size


def get_config(config_string: str = "") -> ml_collections.ConfigDict:
    strategies, size = parse_config_string(config_string)
    size_module, num_steps, corpus_slice = SIZES[size]
    config = size_module.get_config()  # model, mesh, optimizer and batch of the GPT family

    config.train.num_steps = num_steps  # Chinchilla budget, see the table above
    config.optim.warmup_steps = min(2000, num_steps // 10)  # at most 10% of a short run

    # Evaluation as the GPT configs set it: the corpus's scorer (detoxify-jax:original) on the full
    # RealToxicityPrompts (TFDS, all ~99.4K prompts; --config.eval.rtp_num_prompts for a seeded
    # sample) with Gehman et al.'s (2020) 25 samples of 20 tokens, top-p 0.9, T 1.0; UTILITY_TASKS
    # and BIAS_TASKS. Changed here: how much of each task is evaluated, and the batch sizes.
    ev = config.eval
    ev.generate_batch_size = 1024  # decoded rows per call (prompts x samples)
    ev.utility_limit = -1  # whole evaluation splits
    ev.bias_limit = 5000  # examples per bias task (civil_comments' test split has ~97K)
    ev.loglik_batch_size = 64  # sequences scored together
    ev.perplexity_batches = 64  # held-out perplexity batches of 16 x 2048 tokens

    config.study = _study.study_section(
        name="c4_noclean_study",
        corpus=f"tfds:c4/en.noclean:{corpus_slice}",
        scorer="detoxify-jax:original",  # Detoxify's model on the TPUs the study trains on
        strategies=strategies,
        vocabulary="spm",  # trained on the scored corpus; GPT-2-sized, every signal one piece
        vocab_size=config.model.vocab_size,  # 51200
    )
    config.study.records_per_shard = 10_000  # scored records per output shard (the resume unit)
    config.study.on_bad_record = "skip"  # web text: skip (and count) records without text
    config.study.vocab_max_docs = 1_000_000  # SentencePiece keeps a 2M-line sample of these
    return config
