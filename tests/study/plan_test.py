"""The study plan: what the shipped study configs resolve to, that the plan is frozen, and that
a bad study setting fails when the plan is made, naming its config field."""

import dataclasses
import os

import pytest

from toxjax.configs import demo, demo_ablation, study_paper, study_smoke
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.study import plan as plan_lib
from toxjax.study import runs

STRATEGIES = ("base", "meda", "inst", "filter")
WORKDIR = "/tmp/study_plan_test"  # never created: making a plan reads and writes nothing


def names(run_plans):
    return [run_plan.name for run_plan in run_plans]


# ----- the shipped configs -----


def test_demo_plan():
    config = demo.get_config()
    study = plan_lib.plan_study(config, WORKDIR)
    assert [s.value for s in study.strategies] == list(STRATEGIES)
    assert (study.num_seeds, study.variants, study.baseline) == (1, (), "base")
    assert names(study.runs) == names(study.task_runs) == list(STRATEGIES)
    assert study.num_steps == config.train.num_steps == 800
    paths = study.paths
    assert paths.workdir == WORKDIR and paths.scored_dir == os.path.join(WORKDIR, "scored")
    assert paths.vocab_dir == os.path.join(WORKDIR, "vocab")
    assert paths.results_json == os.path.join(WORKDIR, "results.json")
    assert paths.results_md == os.path.join(WORKDIR, "results.md")
    assert [r.directory for r in study.runs] == [os.path.join(WORKDIR, s) for s in STRATEGIES]
    assert study.vocabulary.kind == "spm" and study.vocabulary.size == 768
    assert study.vocabulary.path.startswith(os.path.join(WORKDIR, "vocab", "spm768-"))
    assert study.vocabulary.formats == (ConditioningFormat(),) and not study.vocabulary.segment
    scoring = study.scoring
    assert (scoring.corpus, scoring.scorer) == ("real", "offline")
    assert scoring.output_dir == paths.scored_dir
    assert scoring.options.segment == "" and scoring.options.threshold == 0.5
    (family,) = study.families
    assert family.name == "toxjax_study_real" and family.untagged_rate == 0.0
    assert [s.value for s in family.strategies] == list(STRATEGIES)
    for run_plan in study.runs:  # the seeds and no cooldown: every run trains itself
        assert (run_plan.train_seed, run_plan.data_seed) == (config.train.seed, config.data.seed)
        assert (run_plan.cooldown_fraction, run_plan.cooldown_task) == (0.0, "")
        assert run_plan.trained_as == run_plan.name and run_plan.family == family.name


def test_smoke_plan_scores_segments_for_its_segment_run():
    study = plan_lib.plan_study(study_smoke.get_config(), WORKDIR)
    assert [s.value for s in study.strategies] == [*STRATEGIES, "segment"]
    assert study.paths.scored_dir == os.path.join(WORKDIR, "scored-sentence")
    assert study.scoring.options.segment == "sentence" and study.scoring.corpus == "demo:300"
    assert study.scoring.options.records_per_shard == 100
    assert study.vocabulary.segment and study.vocabulary.size == 320
    assert study.num_steps == 3
    (family,) = study.families
    assert family.name == "toxjax_study_smoke" and family.untagged_rate == 0.02
    assert family.members == tuple((s, Strategy(s)) for s in (*STRATEGIES, "segment"))


@pytest.mark.parametrize("spec", ["all,126m", "inst,1p3b", "filter,8p3b"])
def test_paper_plan(spec):
    config = study_paper.get_config(spec)
    study = plan_lib.plan_study(config, "gs://bucket/study")
    strategy = spec.split(",")[0]
    expected = STRATEGIES if strategy == "all" else (strategy,)
    assert [s.value for s in study.strategies] == list(expected)
    assert names(study.runs) == list(expected) and study.variants == ()
    assert study.paths.scored_dir == "gs://bucket/study/scored"
    assert study.runs[0].directory == f"gs://bucket/study/{expected[0]}"
    assert study.scoring.corpus.startswith("tfds:c4/en.noclean:train[:")
    assert study.scoring.scorer == "detoxify-jax:original"
    assert study.scoring.options.on_bad_record == "skip"
    assert study.scoring.options.records_per_shard == 10_000
    assert study.vocabulary.kind == "spm" and study.vocabulary.size == config.model.vocab_size
    assert study.vocabulary.max_docs == 1_000_000
    assert study.vocabulary.path.startswith("gs://bucket/study/vocab/spm51200-")
    assert study.num_steps == config.train.num_steps


def test_ablation_plan_has_one_family_per_variant():
    study = plan_lib.plan_study(demo_ablation.get_config(), WORKDIR)
    assert [v.strategy.value for v in study.variants] == ["inst"] * 5 + ["meda"] * 2
    assert [f"{v.strategy.value}:{v.spec}" for v in study.variants] == list(demo_ablation.VARIANTS)
    assert names(study.runs)[:3] == ["inst", "meda", "inst@threshold_quantile=0.3"]
    assert len(study.runs) == 2 + len(demo_ablation.VARIANTS)
    assert len(study.families) == 1 + len(demo_ablation.VARIANTS)
    untagged = {family.name: family.untagged_rate for family in study.families}
    variant = runs.Run(Strategy.INST, 0, "untagged_rate=0")
    assert untagged["toxjax_study_ablation"] == 0.02
    assert untagged[f"toxjax_study_ablation_{variant.family}"] == 0.0
    # The mixtures draw their untagged share from BASE: registered though no run trains on it.
    assert study.families[0].strategies == (Strategy.INST, Strategy.MEDA, Strategy.BASE)
    assert dict(study.variants[0].overrides) == {"threshold_quantile": 0.3}
    assert len(study.vocabulary.formats) == 1 + len(demo_ablation.VARIANTS)


def test_seeds_and_evaluation_only_variants():
    config = demo.get_config()
    config.train.seed, config.data.seed = 10, 20
    config.study.strategies = ("base",)
    config.study.num_seeds = 2
    config.study.cooldown_fraction = 0.1
    levels = 'inst_levels=["a:","b:"];inst_level_thresholds=[0.5]'
    config.study.variants = ("inst:placement=after", "inst:" + levels)
    study = plan_lib.plan_study(config, WORKDIR)
    levels_name = runs.Run(Strategy.INST, 0, levels).name
    assert names(study.runs) == [
        "base",
        "inst@placement=after",
        levels_name,
        "base_seed1",
        "inst@placement=after_seed1",
        levels_name + "_seed1",
    ]
    # The evaluation-only variant evaluates a plain INST run, which the study does not list.
    after = study.run_plan("inst@placement=after_seed1")
    assert after.trained_as == "inst_seed1" and "inst_seed1" not in names(study.runs)
    trained = study.run_plan("inst_seed1")
    assert (trained.train_seed, trained.data_seed) == (11, 21)
    assert trained.cooldown_fraction == 0.1
    assert trained.cooldown_task == "toxjax_study_real_base"
    assert study.run_plan("base").cooldown_fraction == 0.0  # BASE has no signal to drop
    overrides = study.variants[1].overrides
    assert overrides == (("inst_levels", ("a:", "b:")), ("inst_level_thresholds", (0.5,)))
    with pytest.raises(KeyError, match="no run named 'meda'"):
        study.run_plan("meda")


def test_plan_leaves_the_config_as_it_was():
    config = study_smoke.get_config()
    before = config.to_dict()
    plan_lib.plan_study(config, WORKDIR)
    assert config.to_dict() == before
    assert not os.path.exists(WORKDIR)


# ----- frozen -----


def test_plan_is_frozen():
    config = demo_ablation.get_config()
    config.study.num_seeds = 2
    study = plan_lib.plan_study(config, WORKDIR)
    parts = [
        study,
        study.paths,
        study.scoring,
        study.scoring.options,
        study.vocabulary,
        study.runs[0],
        study.variants[0],
        study.families[0],
    ]
    for part in parts:
        field = dataclasses.fields(part)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, field, None)
    for value in (study.strategies, study.runs, study.task_runs, study.variants, study.families):
        assert isinstance(value, tuple)
    assert isinstance(study.vocabulary.formats, tuple)
    for family in study.families:
        assert isinstance(family.strategies, tuple) and isinstance(family.members, tuple)
        assert all(not isinstance(value, list) for _, value in family.overrides)


# ----- bad settings -----


def test_strategies_parse_tuples_and_command_line_strings():
    assert [s.value for s in plan_lib.parse_strategies(STRATEGIES)] == list(STRATEGIES)
    # What --config.study.strategies=inst,base gives.
    assert plan_lib.parse_strategies(("inst,base",)) == (Strategy.INST, Strategy.BASE)
    assert plan_lib.parse_strategies("meda") == (Strategy.MEDA,)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("strategies", ("inst", "rlhf"), "config.study.strategies: unknown strategy 'rlhf'"),
        ("strategies", (), "config.study.strategies is empty"),
        ("strategies", ("inst", "INST"), "config.study.strategies lists a strategy twice"),
        ("num_seeds", 0, "config.study.num_seeds must be >= 1, got 0"),
        ("variants", ("inst:treshold=0.1",), "config.study.variants: 'treshold=0.1' is not"),
        ("variants", ("inst",), "config.study.variants: 'inst' is not '<strategy>:"),
        ("variants", ("rlhf:threshold=0.1",), "config.study.variants: unknown strategy 'rlhf'"),
        ("variants", ("inst:score_bins=1",), "config.study.variants: 'inst:score_bins=1': score_"),
        ("variants", ("inst:untagged_rate=1.5",), r"'inst:untagged_rate=1.5': untagged_rate must"),
        ("variants", ("inst:threshold_quantile=0",), r"'inst:threshold_quantile=0': threshold_q"),
        ("variants", ("inst:threshold=0.1", "inst:threshold=0.1"), "variants repeats a run"),
        ("untagged_rate", -0.1, r"config.study.untagged_rate must be in \[0, 1\), got -0.1"),
        ("cooldown_fraction", 1.0, r"config.study.cooldown_fraction must be in \[0, 1\)"),
        ("threshold_quantile", 1.5, r"config.study.threshold_quantile must be in \(0, 1\), or < 0"),
        ("validation_fraction", 1.0, r"config.study.validation_fraction must be in \[0, 1\)"),
        ("vocabulary", "gpt2", "config.study.vocabulary='gpt2': expected one of"),
        ("vocab_size", 0, "config.study.vocab_size must be >= 1, got 0"),
        ("vocab_max_docs", 0, "config.study.vocab_max_docs must be >= 1"),
        ("records_per_shard", 0, "config.study.records_per_shard must be >= 1, got 0"),
        ("on_bad_record", "ignore", "config.study.on_bad_record must be one of"),
        ("corpus", "", "config.study.corpus is empty"),
        ("segment", "chunk:x", "config.study.segment: segment spec 'chunk:x'"),
        ("variants", ("meda:guidance_scale=-1",), "guidance_scale must be >= 0, got -1"),
        ("variants", ("inst:guidance_form=x",), "guidance_form must be one of"),
        ("variants", ("base:guidance_scale=2",), "base has no toxic signal to guide away from"),
        ("judge", "base", "config.study.judge='base' judges every run with the study's BASE"),
    ],
)
def test_bad_study_setting_names_its_field(field, value, message):
    config = study_smoke.get_config()  # with SEGMENT: its segmentation is checked too
    if field == "judge":
        config.study.strategies = ("inst", "base")  # the judge would train after INST
    config.study[field] = value
    with pytest.raises(ValueError, match=message):
        plan_lib.plan_study(config, WORKDIR)


def test_bad_conditioning_and_budget_name_their_field():
    config = demo.get_config()
    config.study.conditioning.position = "middle"
    with pytest.raises(ValueError, match="config.study.conditioning: position must be one of"):
        plan_lib.plan_study(config, WORKDIR)
    config = demo.get_config()
    config.train.num_steps = 0
    with pytest.raises(ValueError, match="config.train.num_steps must be >= 1, got 0"):
        plan_lib.plan_study(config, WORKDIR)


def test_a_given_model_file_or_bytes_need_no_vocab_size():
    config = demo.get_config()
    config.study.vocab_size = 0  # unused by a given model or the byte vocabulary
    for vocabulary, kind in (("/models/spm.model", "file"), ("byte", "byte")):
        config.study.vocabulary = vocabulary
        assert plan_lib.plan_study(config, WORKDIR).vocabulary.kind == kind
