"""The `study` section of a study config (toxjax.study.experiment): what is scored, how, and which
strategies are trained. A study config is a full training config (toxjax/configs/default.py) plus
this section; every strategy trains with that one training config, only data.task differs.
"""

import dataclasses

import ml_collections

from toxjax.data.conditioning import ConditioningFormat


def study_section(
    *,
    name: str,
    corpus: str,
    scorer: str,
    strategies: tuple[str, ...] = ("base", "meda", "inst", "filter"),
    vocabulary: str = "byte",
    vocab_size: int = 32000,
) -> ml_collections.ConfigDict:
    study = ml_collections.ConfigDict()
    # SeqIO family name of the study's tasks: {name}_base, {name}_meda, {name}_inst, ...
    study.name = name
    # toxjax.scoring.job input: "demo[:<num_docs>]" | "tfds:<name>[/<config>]:<split>"
    # (slicing works, e.g. "train[:10%]") | "jsonl:<glob>" or "*.jsonl" globs |
    # "parquet:<glob>" or "*.parquet" globs | "tfrecord:<glob>" (gs:// too).
    study.corpus = corpus
    study.text_field = "text"  # field holding the document text in JSONL/TFRecord/TFDS records
    study.scorer = scorer  # toxjax.scoring.scorer_specs.make_scorer spec for the pretraining corpus
    # Scored directory; "" = WORKDIR/scored. Point it at a corpus scored beforehand (e.g. by
    # `python -m toxjax.scoring --runner=DataflowRunner`) to skip scoring; an incomplete one
    # resumes.
    study.scored_dir = ""
    study.records_per_shard = 1000  # scored records per output shard (the resume unit)
    study.on_bad_record = "error"  # "error" | "skip" a record without usable text
    study.tfds_data_dir = ""  # TFDS data_dir of a tfds: corpus; "" = the TFDS default
    # Strategies trained, in this order; any of base, meda, inst, filter (the paper's) and
    # segment (a control token per scored segment, Korbak et al. 2023).
    study.strategies = strategies
    # With segment among the strategies: how the scoring job cuts documents into scored
    # segments, "sentence" | "chunk:<chars>" (toxjax.scoring.segments); else unused.
    study.segment = "sentence"
    study.baseline = "base"  # the row the report compares every other strategy with
    # Fluency judge of every run (config.eval.judge): "base" = this study's BASE model (seed 0;
    # base must come first in strategies), "" = none, or a toxjax run / transformers directory.
    study.judge = ""
    # Conditioning format (toxjax.data.conditioning.ConditioningFormat fields). The defaults are OUR
    # RECONSTRUCTION of the paper's: its exact MEDA string, INST wording and threshold are not
    # published.
    study.conditioning = ml_collections.ConfigDict(dataclasses.asdict(ConditioningFormat()))
    # "byte" (seqio.ByteVocabulary) | "spm" (SentencePiece trained on the scored corpus with
    # toxjax.data.vocab, every signal kept whole; WORKDIR/vocab/) | a path to a .model file.
    study.vocabulary = vocabulary
    study.vocab_size = vocab_size  # pieces of a trained "spm" vocabulary (<= model.vocab_size)
    study.vocab_max_docs = 200_000  # documents read to train it; -1 = all
    study.validation_fraction = 0.05  # documents held out (by key hash) for held-out perplexity
    # Share of each MEDA/INST example drawn untagged from BASE (Korbak et al. 2023 keep 1%
    # untagged); 0 = the paper's setup, every document tagged.
    study.untagged_rate = 0.0
    # Training seeds per strategy (init, dropout and data order move together): cross-model
    # comparisons then carry intervals that include seed variance.
    study.num_seeds = 1
    # Ablation variants, each one more trained model: "<strategy>:<field>=<value>[;...]" with
    # ConditioningFormat fields or untagged_rate / threshold_quantile (toxjax.study.runs).
    study.variants = ()
    # >= 0: the INST/FILTER threshold is this quantile of the scored corpus' scores (a fixed
    # share of documents counts as toxic, whatever the scorer's calibration); < 0: use
    # conditioning.threshold as given.
    study.threshold_quantile = -1.0
    # Signal-free cooldown of MEDA/INST/SEGMENT runs (MeCo): the last fraction of steps draws
    # untagged BASE data (config.data.cooldown_*); 0 = none.
    study.cooldown_fraction = 0.0
    return study
