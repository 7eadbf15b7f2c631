"""The study's runs (strategies x seeds x variants): names, variant parsing, training order, and
the score-quantile threshold of a variant, on a tiny hand-made scored directory."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import tensorflow as tf

from toxjax import fileio
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.study import runs

TQ = "threshold_quantile=0.3"


# ----- names -----


def test_run_names_are_strategy_seed_and_variant():
    assert runs.Run(Strategy.INST).name == "inst"  # plain seed 0: just the strategy
    assert runs.Run(Strategy.INST, 1).name == "inst_seed1"
    assert runs.Run(Strategy.INST, 0, TQ).name == "inst@threshold_quantile=0.3"
    assert runs.Run(Strategy.INST, 2, TQ).name == "inst@threshold_quantile=0.3_seed2"
    # Quotes, spaces, colons and ';' become "_": a name is a workdir subdirectory.
    variant = 'inst_toxic="Rude text:";threshold=0.1'
    assert runs.Run(Strategy.MEDA, 0, variant).name == "meda@inst_toxic=_Rude_text_+threshold=0.1"


def test_family_is_shared_by_the_seeds_of_a_variant_only():
    assert runs.Run(Strategy.INST).family == runs.Run(Strategy.INST, 3).family == ""
    family = runs.Run(Strategy.INST, 0, TQ).family
    assert family == "v" + hashlib.sha1(TQ.encode()).hexdigest()[:8]
    assert runs.Run(Strategy.MEDA, 4, TQ).family == family  # same overrides, same task family
    assert runs.Run(Strategy.INST, 0, "threshold_quantile=0.4").family != family


# ----- variant parsing -----


def test_parse_overrides_reads_json_values_or_bare_strings():
    overrides = runs.parse_overrides("threshold=0.1; inst_toxic=Rude: ;untagged_rate=0;")
    assert overrides == {"threshold": 0.1, "inst_toxic": "Rude:", "untagged_rate": 0}
    assert runs.parse_overrides("inst_nontoxic=Polite\\ntext") == {"inst_nontoxic": "Polite\ntext"}
    assert runs.parse_overrides('meda_template="{score}"') == {"meda_template": "{score}"}  # JSON
    assert runs.Run(Strategy.INST, 0, "threshold=0.2").overrides() == {"threshold": 0.2}
    assert runs.parse_overrides("") == {}


@pytest.mark.parametrize("variant", ["treshold=0.1", "threshold", "threshold=0.1;untaged_rate=1"])
def test_parse_overrides_typos_fail_naming_the_item(variant):
    bad = variant.split(";")[-1]
    with pytest.raises(ValueError, match=f"'{bad}' is not <field>=<value>"):
        runs.parse_overrides(variant)


def test_parse_variant_splits_strategy_and_overrides():
    assert runs.parse_variant("inst:threshold=0.1") == (Strategy.INST, "threshold=0.1")
    assert runs.parse_variant(" MEDA : untagged_rate=0.1 ") == (Strategy.MEDA, "untagged_rate=0.1")
    for spec in ("inst", "inst:", "inst:  "):
        with pytest.raises(ValueError, match="is not '<strategy>:<field>=<value>"):
            runs.parse_variant(spec)
    with pytest.raises(ValueError, match="'treshold=0.1' is not <field>=<value>"):
        runs.parse_variant("inst:treshold=0.1")  # typos fail before anything trains
    with pytest.raises(ValueError, match="unknown strategy 'rlhf'"):
        runs.parse_variant("rlhf:threshold=0.1")


# ----- training order -----


def variants(*specs):
    return [runs.parse_variant(spec) for spec in specs]


def test_study_runs_go_seed_by_seed_strategies_then_variants():
    study = runs.study_runs(
        [Strategy.BASE, Strategy.INST], variants("inst:" + TQ, "base:untagged_rate=0.1"), 2
    )
    assert [run.name for run in study] == [
        "base",
        "inst",
        "inst@threshold_quantile=0.3",
        "base@untagged_rate=0.1",
        "base_seed1",
        "inst_seed1",
        "inst@threshold_quantile=0.3_seed1",
        "base@untagged_rate=0.1_seed1",
    ]  # a stopped study has whole seeds finished first


def test_study_runs_defaults_and_errors():
    # No seeds, no variants: one run per strategy.
    assert runs.study_runs([Strategy.MEDA]) == [runs.Run(Strategy.MEDA)]
    one = runs.study_runs([Strategy.INST], variants("inst:" + TQ))
    assert one == [runs.Run(Strategy.INST), runs.Run(Strategy.INST, 0, TQ)]
    with pytest.raises(ValueError, match="num_seeds must be >= 1, got 0"):
        runs.study_runs([Strategy.INST], num_seeds=0)
    with pytest.raises(ValueError, match="repeats a run"):
        runs.study_runs([Strategy.INST], variants("inst:" + TQ, "inst: " + TQ))


# ----- evaluation-only variants -----


def test_evaluation_only_variants_evaluate_the_run_without_them():
    after = runs.Run(Strategy.INST, 2, "placement=after")
    assert after.trained_as() == runs.Run(Strategy.INST, 2)  # same seed, no variant
    both = runs.Run(Strategy.MEDA, 1, "score_precision=1; meda_toxic_score=0.9;placement=after")
    assert both.trained_as() == runs.Run(Strategy.MEDA, 1, "score_precision=1")
    for run in (runs.Run(Strategy.INST), runs.Run(Strategy.INST, 1, TQ + ";")):
        assert run.trained_as() is run  # trains itself, the name kept as written
    study = [runs.Run(Strategy.BASE), after, runs.Run(Strategy.INST, 0, "placement=after")]
    assert [r.name for r in runs.with_trained_runs(study)] == [
        "base",
        "inst_seed2",
        "inst@placement=after_seed2",
        "inst",
        "inst@placement=after",
    ]  # each trained run once, before the runs that evaluate it


@pytest.mark.parametrize(
    "field", [f for f in runs.EVAL_ONLY_FIELDS if f not in runs.EVAL_CONFIG_FIELDS]
)
def test_evaluation_only_fields_leave_every_training_text_unchanged(field):
    changed = {"placement": "after", "meda_inference_score": 0.5, "meda_toxic_score": 0.7}[field]
    base = ConditioningFormat(score_precision=1)
    other = dataclasses.replace(base, **{field: changed})
    documents = [("a calm text", 0.02, "k1"), ("a rude text", 0.93, "k2"), ("edge", 0.5, "k3")]
    for strategy in (Strategy.BASE, Strategy.MEDA, Strategy.INST, Strategy.FILTER):
        for text, score, key in documents:
            assert other.condition(strategy, text, score, key) == base.condition(
                strategy, text, score, key
            )
        if strategy in (Strategy.MEDA, Strategy.INST):
            texts = tf.constant([d[0] for d in documents])
            scores = tf.constant([d[1] for d in documents])
            keys = tf.constant([d[2] for d in documents])
            np.testing.assert_array_equal(
                other.tf_condition(strategy, texts, scores, keys).numpy(),
                base.tf_condition(strategy, texts, scores, keys).numpy(),
            )
    assert other.condition_segments("Hi. You idiot.", [4, 14], [0.1, 0.9], "k") == (
        base.condition_segments("Hi. You idiot.", [4, 14], [0.1, 0.9], "k")
    )
    assert other.signal_strings() == base.signal_strings()  # the same vocabulary pieces
    prompts = [
        (f.inference_prefix(s), f.inference_suffix(s), f.toxic_prefix(s), f.toxic_suffix(s))
        for f in (base, other)
        for s in (Strategy.MEDA, Strategy.INST)
    ]
    assert prompts[:2] != prompts[2:]  # ... but other evaluation prompts


# ----- threshold quantile -----


def write_scored(directory, shards):
    """WORKDIR/scored layout: shards/*.jsonl of {"text", "scores"} records (or raw lines)."""
    fileio.make_dirs(str(directory / "shards"))
    for name, lines in shards.items():
        rows = [line if isinstance(line, str) else json.dumps(line) for line in lines]
        (directory / "shards" / name).write_text("\n".join(rows) + "\n")
    return str(directory)


def record(toxicity, insult=0.0):
    return {"text": f"t{toxicity}", "scores": {"toxicity": toxicity, "insult": insult}}


@pytest.fixture
def scored(tmp_path):
    # Toxicity 0.1 .. 0.5 over two shards (and a blank line): np.quantile interpolates linearly.
    return write_scored(
        tmp_path / "scored",
        {
            "00000.jsonl": [record(0.3, 0.9), "", record(0.1, 0.7)],
            "00001.jsonl": [record(0.5, 0.8), record(0.2, 0.6), record(0.4, 1.0)],
        },
    )


def test_score_quantile_of_every_shard(scored):
    assert runs.score_quantile(scored, "toxicity", 0.5) == pytest.approx(0.3)
    assert runs.score_quantile(scored, "toxicity", 0.25) == pytest.approx(0.2)
    assert runs.score_quantile(scored, "toxicity", 0.1) == pytest.approx(0.14)  # 0.1 + 0.4*0.1
    assert runs.score_quantile(scored, "insult", 0.5) == pytest.approx(0.8)
    for quantile in (0.0, 1.0):
        with pytest.raises(ValueError, match="threshold_quantile must be in \\(0, 1\\)"):
            runs.score_quantile(scored, "toxicity", quantile)


@pytest.mark.parametrize(
    "bad", [{"text": "x", "scores": {}}, {"text": "x"}, record(True), record("0.3")]
)
def test_score_quantile_bad_record_names_path_and_line(tmp_path, bad):
    directory = write_scored(tmp_path, {"00000.jsonl": [record(0.1), "", bad]})
    path = str(tmp_path / "shards" / "00000.jsonl")
    with pytest.raises(fileio.FileFormatError, match=f"{path}:3: field 'scores.toxicity'"):
        runs.score_quantile(directory, "toxicity", 0.5)


def test_score_quantile_without_records_fails(tmp_path):
    with pytest.raises(fileio.FileFormatError, match="no scored records"):
        runs.score_quantile(write_scored(tmp_path, {}), "toxicity", 0.5)


def test_run_format_applies_format_fields_and_threshold_quantile(scored, tmp_path):
    base = ConditioningFormat()
    overrides = {"inst_toxic": "Rude:", "untagged_rate": 0.1, "threshold_quantile": 0.5}
    fmt = runs.run_format(base, overrides, scored)
    # untagged_rate is a study field, not a format one; the quantile sets the threshold.
    assert fmt.threshold == pytest.approx(0.3)
    assert fmt == dataclasses.replace(base, inst_toxic="Rude:", threshold=fmt.threshold)
    # The quantile is of the format's own attribute.
    insult = runs.run_format(ConditioningFormat(attribute="insult"), overrides, scored)
    assert insult.threshold == pytest.approx(0.8)
    # A plain threshold (or a negative quantile: off) needs no scored corpus at all.
    missing = str(tmp_path / "nowhere")
    assert runs.run_format(base, {"threshold": 0.2}, missing).threshold == 0.2
    assert runs.run_format(base, {"threshold_quantile": -1.0}, missing) == base


def test_bin_and_level_variants_parse_to_format_fields():
    overrides = runs.parse_overrides(
        'inst_levels=["Clean:","Rude:","Toxic:"];inst_level_thresholds=[0.2,0.6];score_bins=4'
    )
    assert overrides == {
        "inst_levels": ["Clean:", "Rude:", "Toxic:"],
        "inst_level_thresholds": [0.2, 0.6],
        "score_bins": 4,
    }
    fmt = runs.run_format(ConditioningFormat(), overrides, "/unused")
    assert fmt.inst_levels == ("Clean:", "Rude:", "Toxic:") and fmt.score_bins == 4
    assert runs.parse_variant("segment:placement=before") == (Strategy.SEGMENT, "placement=before")
