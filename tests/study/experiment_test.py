"""Tests of the one-command study: config handling, the paper and demo configs, and the whole
study end to end on a tiny config, including a rerun that skips every finished stage."""

import hashlib
import json
import logging
import os
import pathlib
import sys

import pytest

from toxjax import workdir_lock
from toxjax.configs import demo, demo_synthetic, study_paper, study_smoke
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.evaluation import evaluator
from toxjax.model import decoder, flops
from toxjax.study import experiment, reporting, runs
from toxjax.study import plan as plan_lib
from toxjax.testing.processes import ProcessGroup, command_environment

FAST_COMPILE = {"xla_backend_optimization_level": 0}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBSETS = ("all", "toxic", "nontoxic", "challenging")
STRATEGIES = ("base", "meda", "inst", "filter")


# ----- config handling -----


def run_plan(config, name, workdir="/study"):
    """The RunPlan of run `name` in the plan of `config`."""
    return plan_lib.plan_study(config, workdir).run_plan(name)


def test_run_config_is_the_training_config_on_that_run_task():
    config = demo.get_config()
    run_config = plan_lib.run_config(config, run_plan(config, "meda"), "toxjax_study_demo_meda")
    assert "study" not in run_config and "study" in config  # the study config is untouched
    assert run_config.data.task == "toxjax_study_demo_meda"
    assert run_config.eval.model_name == "meda" and run_config.eval.strategy == ""
    assert config.data.task != run_config.data.task
    # Same model, budget and seeds for every strategy: only data.task and the eval name differ.
    other = plan_lib.run_config(config, run_plan(config, "base"), "toxjax_study_demo_base")
    assert run_config.model.to_dict() == other.model.to_dict() == config.model.to_dict()
    assert run_config.train.to_dict() == other.train.to_dict() == config.train.to_dict()
    assert run_config.optim.to_dict() == other.optim.to_dict()


def test_guided_variants_evaluate_the_plain_runs_checkpoints_with_guidance_and_one_judge():
    config = demo.get_config()
    config.study.variants = (
        "meda:guidance_scale=2",
        "inst:guidance_scale=1;guidance_form=dexperts",
    )
    plan = plan_lib.plan_study(config, "/study")
    assert plan.judge == "/study/base"  # the BASE model of seed 0 judges every run
    guided = plan.run_plan("inst@guidance_scale=1+guidance_form=dexperts")
    assert guided.trained_as == "inst"  # evaluation only: nothing trains twice
    run_config = plan_lib.run_config(config, guided, "t", judge=plan.judge)
    assert (run_config.eval.guidance_scale, run_config.eval.guidance_form) == (1, "dexperts")
    assert run_config.eval.judge == "/study/base"
    assert run_config.eval.judge_scorer == "heldout-judge"
    plain = plan_lib.run_config(config, plan.run_plan("inst"), "t", judge=plan.judge)
    assert plain.eval.guidance_scale == 0.0 and plain.eval.judge == "/study/base"


def test_run_config_of_a_later_seed_moves_both_seeds():
    config = demo.get_config()
    config.train.seed, config.data.seed = 10, 20
    config.study.num_seeds = 3
    run_config = plan_lib.run_config(config, run_plan(config, "inst_seed2"), "task")
    # Init/dropout and data order move together; the run's name labels its report row.
    assert (run_config.train.seed, run_config.data.seed) == (12, 22)
    assert run_config.eval.model_name == "inst_seed2"
    assert (config.train.seed, config.data.seed) == (10, 20)  # the study config is untouched
    assert run_config.model.to_dict() == config.model.to_dict()


def test_cooldown_variant_ends_conditioned_runs_on_their_family_base_task():
    config = demo.get_config()
    config.study.variants = ("inst:cooldown_fraction=0.1",)
    variant = runs.Run(Strategy.INST, 0, "cooldown_fraction=0.1")
    run_config = plan_lib.run_config(config, run_plan(config, variant.name), "family_inst")
    assert run_config.data.cooldown_fraction == 0.1
    assert run_config.data.cooldown_task == f"{config.study.name}_{variant.family}_base"
    base = plan_lib.run_config(config, run_plan(config, "base"), "t")
    assert base.data.cooldown_fraction == 0.0  # nothing to cool down from
    config.study.cooldown_fraction = 0.2  # the study-wide setting applies to plain runs
    plain = plan_lib.run_config(config, run_plan(config, "meda"), "t")
    assert plain.data.cooldown_task == f"{config.study.name}_base"


def test_run_workdirs_and_finished_evaluations(tmp_path):
    workdir = str(tmp_path)
    paths = plan_lib.plan_study(demo.get_config(), workdir).paths
    seed1 = runs.Run(Strategy.INST, 1)
    variant = runs.Run(Strategy.INST, 0, "threshold_quantile=0.3")
    assert paths.run_dir(seed1) == os.path.join(workdir, "inst_seed1")
    assert paths.run_dir(Strategy.MEDA) == os.path.join(workdir, "meda")
    assert paths.run_dir("FILTER") == os.path.join(workdir, "filter")
    assert paths.eval_json(variant, 3) == os.path.join(
        workdir, "inst@threshold_quantile=0.3", "eval", "step_3.json"
    )
    # Finished: seed1, the variant, and a plain strategy some other job trained ("base"), but
    # not one at another step ("meda") nor one without results.
    for run, step in ((seed1, 3), (variant, 3), (runs.Run(Strategy.BASE), 3), (Strategy.MEDA, 2)):
        path = paths.eval_json(run, step)
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            json.dump({"step": step}, f)
    study_runs = [runs.Run(Strategy.INST), seed1, variant]
    found = experiment.finished_evaluations(paths, 3, study_runs)
    assert list(found) == ["inst_seed1", "inst@threshold_quantile=0.3", "base"]  # run order
    assert found["base"] == {"step": 3}


def test_conditioning_and_vocabulary_settings(tmp_path):
    config = demo.get_config()
    workdir = str(tmp_path)
    assert plan_lib.plan_study(config, workdir).conditioning == ConditioningFormat()
    config.study.conditioning.inst_nontoxic = "Polite text:"
    conditioning = plan_lib.plan_study(config, workdir).conditioning
    assert conditioning.inference_prefix("inst") == "Polite text:\n"
    with config.study.conditioning.unlocked():
        config.study.conditioning.wording = "x"
    with pytest.raises(ValueError, match="config.study.conditioning: unknown conditioning fields"):
        plan_lib.plan_study(config, workdir)

    config = demo.get_config()
    spm_path = plan_lib.plan_study(config, workdir).vocabulary.path
    assert spm_path.startswith(os.path.join(workdir, "vocab", f"spm{config.study.vocab_size}-"))
    config.study.conditioning.inst_toxic = "Rude text:"  # other signal pieces: another model
    assert plan_lib.plan_study(config, workdir).vocabulary.path != spm_path
    config.study.vocabulary = "byte"
    assert plan_lib.plan_study(config, workdir).vocabulary.path is None
    config.study.vocabulary = "/models/spm.model"
    study = plan_lib.plan_study(config, workdir)
    assert study.vocabulary.path == "/models/spm.model" and study.vocabulary.kind == "file"
    with pytest.raises(FileNotFoundError, match="no SentencePiece model at '/models/spm.model'"):
        experiment.vocab_stage(study.vocabulary, study.paths.scored_dir)
    config.study.vocabulary = "gpt2"
    with pytest.raises(ValueError, match="config.study.vocabulary='gpt2'"):
        plan_lib.plan_study(config, workdir)


# ----- shipped configs -----


def test_synthetic_demo_config_runs_offline_on_the_embedded_data():
    config = demo_synthetic.get_config()
    assert config.study.corpus == "demo" and config.study.scorer == "offline"
    assert config.eval.scorer == "offline" and config.eval.rtp_prompts == "demo"
    assert tuple(config.eval.utility_tasks) == ("demo_cloze",)
    assert tuple(config.eval.bias_tasks) == ("demo_toxicity_detection",)
    assert tuple(config.study.strategies) == STRATEGIES
    assert config.study.vocab_size <= config.model.vocab_size
    assert config.data.seq_len <= config.model.max_len


def test_demo_config_runs_offline_on_the_packaged_real_text():
    config = demo.get_config()
    assert config.study.corpus == "real" and config.study.scorer == "offline"
    assert config.eval.scorer == "offline" and config.eval.real_text == "packaged"
    assert config.eval.rtp_prompts == "real:test"  # reports use the test prompts only
    assert tuple(config.study.strategies) == STRATEGIES
    assert config.study.vocab_size <= config.model.vocab_size
    assert config.data.seq_len <= config.model.max_len


@pytest.mark.parametrize("size", list(study_paper.SIZES))
@pytest.mark.parametrize("strategy", [*STRATEGIES, "all"])
def test_paper_configs_for_every_strategy_and_size(strategy, size):
    config = study_paper.get_config(f"{strategy},{size}")
    expected = STRATEGIES if strategy == "all" else (strategy,)
    assert tuple(config.study.strategies) == expected
    study = plan_lib.plan_study(config, "gs://b/study")
    assert [s.value for s in study.strategies] == list(expected)
    assert config.study.corpus.startswith("tfds:c4/en.noclean:train[:")
    assert config.study.scorer == config.eval.scorer == "detoxify-jax:original"
    assert config.study.vocabulary == "spm" and config.study.vocab_size == config.model.vocab_size
    assert config.eval.rtp_prompts == "tfds" and config.eval.rtp.num_samples == 25
    assert config.eval.rtp.max_new_tokens == 20 and config.eval.rtp.top_p == 0.9
    assert tuple(config.eval.utility_tasks) == study_paper.UTILITY_TASKS
    assert len(study_paper.UTILITY_TASKS) == 5
    assert tuple(config.eval.bias_tasks) == study_paper.BIAS_TASKS
    # The budget in the docstring table: about 20 tokens per parameter (Chinchilla).
    params = flops.param_count(decoder.ModelConfig.from_config(config.model))
    tokens = config.train.num_steps * config.data.global_batch_size * config.data.seq_len
    assert 19.0 <= tokens / params <= 21.5, (size, params, tokens)
    assert config.optim.warmup_steps < config.train.num_steps
    # The study section is what a training run is not: dropping it leaves a training config.
    run_config = plan_lib.run_config(config, study.runs[0], "x")
    assert "study" not in run_config and run_config.model.num_layers > 1


def test_paper_config_string_errors_name_the_choices():
    for bad in ("", "inst", "inst,2b", "rlhf,1p3b", "inst,1p3b,extra"):
        with pytest.raises(ValueError, match="must be '<strategy>,<size>'"):
            study_paper.get_config(bad)


# ----- end to end -----


def _mtimes(paths):
    return {path: os.stat(path).st_mtime_ns for path in paths}


def _check_first_run(config, workdir, results, strategies):
    """The smoke study's results: every run, metric and output file where it belongs."""
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f) == results
    assert list(results) == list(strategies)
    for name, entry in results.items():
        mixed = "_mix" if name in ("meda", "inst", "segment") else ""  # untagged share
        assert entry["task"] == f"toxjax_study_smoke_{name}{mixed}"
        assert entry["step"] == config.train.num_steps
        for field in ("toxicity", "toxicity_unconditioned"):
            assert set(entry[field]) == set(SUBSETS), (name, field)
            for metric in ("expected_max_toxicity", "toxicity_probability"):
                value = entry[field]["all"][metric]
                assert 0.0 <= value <= 1.0, (name, field, metric)
                for subset in SUBSETS:
                    assert metric in entry[field][subset]
        assert 0.0 <= entry["utility"]["demo_cloze"]["acc"] <= 1.0
        assert 0.0 <= entry["bias_auc"]["demo_toxicity_detection"] <= 1.0
        assert entry["final_train_loss"] > 0
        # Fluency under the BASE run (the same judge for all), toxicity under the second judge.
        judged = entry["real_text"]
        assert judged["judge_perplexity"]["estimate"] > 1, name
        assert judged["judge_scorer"].startswith("heldout-judge"), name
        assert 0.0 <= judged["judge_tp"]["estimate"] <= 1.0, name
    assert results["inst"]["prefix"] == "The following text is non-toxic:\n"
    assert results["meda"]["prefix"] == "toxicity: 0.00\n"
    assert results["base"]["prefix"] == results["filter"]["prefix"] == ""
    with open(os.path.join(workdir, "segment", "eval", "step_3.json")) as f:
        segment_eval = json.load(f)
    assert (segment_eval["prefix"], segment_eval["suffix"]) == ("", "<|aligned|>")
    records = os.path.join(workdir, "segment", "eval", "step_3", "rtp_conditioned.jsonl")
    with open(records) as f:
        assert all(json.loads(line)["suffix"] == "<|aligned|>" for line in f)
    with open(os.path.join(workdir, "results.md")) as f:
        table = f.read()
    for name in strategies:
        assert f"| {name} |" in table
    for plot in reporting.PLOTS.values():
        with open(os.path.join(workdir, plot), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(workdir, "scored-sentence", "manifest.json")) as f:
        assert json.load(f)["segment"] == "sentence"  # the corpus carries segment scores
    assert os.listdir(os.path.join(workdir, "vocab"))  # the SentencePiece model was trained
    with open(os.path.join(workdir, "inst", "config.json")) as f:
        assert json.load(f)["data"]["task"] == "toxjax_study_smoke_inst_mix"  # untagged share


def _check_eval_only_variant(config, workdir, results, strategies, variant_run):
    """An evaluation-only variant trains nothing: it evaluates INST's checkpoints, prompted
    its way."""
    variant = variant_run.name
    with_variant = experiment.run_study(
        config, workdir, progress=False, compiler_options=FAST_COMPILE
    )
    assert list(with_variant) == [*strategies, variant]
    with open(plan_lib.plan_study(config, workdir).paths.eval_json(variant_run, 3)) as f:
        variant_eval = json.load(f)
    assert (variant_eval["prefix"], variant_eval["suffix"]) == (
        "",
        "\nThe following text is non-toxic:\n",
    )
    assert with_variant[variant]["final_train_loss"] == results["inst"]["final_train_loss"]
    assert sorted(os.listdir(os.path.join(workdir, variant))) == [
        "eval",
        "eval_config.json",
        "tensorboard",
    ]


def _check_reevaluation(config, workdir, strategies, variant_run, monkeypatch):
    """A changed eval config, or an evaluator that reports more, re-evaluates (only) every
    model."""
    paths = plan_lib.plan_study(config, workdir).paths
    evaluated = []
    monkeypatch.setattr(
        evaluator.Evaluator,
        "evaluate_checkpoint",
        lambda self, **kw: evaluated.append((self.workdir, kw["checkpoint_dir"])) or {},
    )
    config.eval.rtp.num_samples = 3
    experiment.run_study(config, workdir, progress=False)
    own = [(paths.run_dir(name), None) for name in strategies]
    inst = paths.run_dir("inst")
    assert evaluated == [*own, (paths.run_dir(variant_run), inst)]
    experiment.run_study(config, workdir, progress=False)
    assert len(evaluated) == len(own) + 1  # done: nothing evaluates again ...
    monkeypatch.setattr(evaluator, "RESULTS_VERSION", evaluator.RESULTS_VERSION + 1)
    experiment.run_study(config, workdir, progress=False)
    assert evaluated[len(own) + 1 :] == [*own, (paths.run_dir(variant_run), inst)]


@pytest.mark.slow
def test_study_end_to_end_on_two_processes_then_rerun_skips_finished_stages(tmp_path, monkeypatch):
    """The smoke study as on a pod slice's workers (2 JAX processes x 4 CPU devices, gloo),
    then reruns on 1 process find every stage done."""
    config = study_smoke.get_config()
    workdir = str(tmp_path / "study")
    command = [
        sys.executable,
        "-m",
        "toxjax.study",
        "--config=toxjax/configs/study_smoke.py",
        f"--workdir={workdir}",
    ]
    # Every strategy compiles the same programs: the second on reads them from the cache.
    env = command_environment(REPO, str(tmp_path / "jax_cache"))
    group = ProcessGroup(command, str(tmp_path / "logs"), cwd=REPO, env=env)
    codes = group.wait(900)
    assert codes == [0, 0], "\n".join(log[-3000:] for log in group.logs())
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    strategies = (*STRATEGIES, "segment")
    _check_first_run(config, workdir, results, strategies)

    # Rerun: nothing trains or evaluates again, the report is rebuilt.
    train_logs = [os.path.join(workdir, name, "train_log.jsonl") for name in strategies]
    paths = plan_lib.plan_study(config, workdir).paths
    eval_files = [paths.eval_json(name, 3) for name in strategies]
    before = _mtimes(train_logs + eval_files)
    logs_before = [pathlib.Path(path).read_text() for path in train_logs]
    os.remove(paths.results_md)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    evaluate_checkpoint = evaluator.Evaluator.evaluate_checkpoint
    monkeypatch.setattr("toxjax.training.train.train_and_evaluate", must_not_run)
    monkeypatch.setattr(evaluator.Evaluator, "evaluate_checkpoint", must_not_run)
    again = experiment.run_study(config, workdir, progress=False)
    assert again == results
    assert _mtimes(train_logs + eval_files) == before
    assert [pathlib.Path(path).read_text() for path in train_logs] == logs_before
    assert os.path.exists(paths.results_md)

    monkeypatch.setattr(evaluator.Evaluator, "evaluate_checkpoint", evaluate_checkpoint)
    config.study.variants = ("inst:placement=after",)
    variant_run = runs.Run(Strategy.INST, 0, "placement=after")
    _check_eval_only_variant(config, workdir, results, strategies, variant_run)
    assert _mtimes(train_logs + eval_files) == before  # nothing else trained or evaluated
    _check_reevaluation(config, workdir, strategies, variant_run, monkeypatch)


def test_finished_checkpoint_beyond_the_budget_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "trained_step", lambda run_workdir: 9)
    config = study_smoke.get_config()
    with pytest.raises(ValueError, match="beyond config.train.num_steps=3"):
        experiment.train_strategy(
            plan_lib.run_config(config, run_plan(config, "base"), "t"), str(tmp_path)
        )


def test_training_stopped_early_interrupts_the_study(tmp_path, monkeypatch):
    class StoppedState:
        step = 2  # a stop request returned after step 2 of 3

    calls = []
    monkeypatch.setattr(
        "toxjax.training.train.train_and_evaluate",
        lambda config, workdir, **kwargs: calls.append(kwargs) or StoppedState,
    )
    smoke = study_smoke.get_config()
    config = plan_lib.run_config(smoke, run_plan(smoke, "base"), "t")
    with pytest.raises(experiment.StudyInterrupted, match="stopped at step 2 of 3"):
        experiment.train_strategy(config, str(tmp_path))
    assert calls == [{"warm_start_fn": None}]  # the caller's warm start (none configured)
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["data"]["task"] == "t"  # the run's config is recorded first


def test_vocabulary_identity_is_the_model_content(tmp_path):
    config = study_smoke.get_config()
    config.study.vocabulary = "byte"
    byte = plan_lib.plan_study(config, str(tmp_path)).vocabulary
    assert experiment.vocabulary_identity(byte) == {"vocabulary": "byte"}
    model = tmp_path / "given.model"
    model.write_bytes(b"not really a sentencepiece model")
    config.study.vocabulary = str(model)
    identity = experiment.vocabulary_identity(plan_lib.plan_study(config, str(tmp_path)).vocabulary)
    assert identity["vocabulary"] == "given.model"
    assert identity["sha256"] == hashlib.sha256(b"not really a sentencepiece model").hexdigest()


def test_checkpoints_of_another_vocabulary_are_refused(tmp_path, monkeypatch, caplog):
    class FinishedState:
        step = 3

    monkeypatch.setattr(
        "toxjax.training.train.train_and_evaluate", lambda config, workdir, **_: FinishedState
    )
    smoke = study_smoke.get_config()
    config = plan_lib.run_config(smoke, run_plan(smoke, "base"), "t")
    trained = {"vocabulary": "spm768-aaaa.model", "sha256": "a" * 64}
    # Training records the vocabulary next to the run's config.
    assert experiment.train_strategy(config, str(tmp_path), trained) is True
    with open(tmp_path / experiment.VOCAB_STAMP) as f:
        assert json.load(f) == trained
    monkeypatch.setattr(experiment, "trained_step", lambda run_workdir: 3)
    # The same content under another name is reused; other content is refused, both named.
    renamed = {**trained, "vocabulary": "spm768-bbbb.model"}
    assert experiment.train_strategy(config, str(tmp_path), renamed) is False
    other = {"vocabulary": "spm768-cccc.model", "sha256": "c" * 64}
    with pytest.raises(ValueError, match=r"(?s)spm768-aaaa.model.*spm768-cccc.model.*fresh"):
        experiment.train_strategy(config, str(tmp_path), other)
    with pytest.raises(ValueError, match="spm768-aaaa.model"):
        experiment.train_strategy(config, str(tmp_path), {"vocabulary": "byte"})
    # A run trained before the record existed cannot be checked: reused, with a warning.
    (tmp_path / experiment.VOCAB_STAMP).unlink()
    with caplog.at_level(logging.WARNING):
        assert experiment.train_strategy(config, str(tmp_path), other) is False
    assert "cannot be checked" in caplog.text


def test_bad_settings_and_task_modules_fail_before_anything_is_written(tmp_path):
    workdir = tmp_path / "study"
    config = study_smoke.get_config()
    config.study.strategies = ("inst", "rlhf")
    with pytest.raises(ValueError, match="config.study.strategies: unknown strategy 'rlhf'"):
        experiment.run_study(config, str(workdir), progress=False)
    config = study_smoke.get_config()
    config.data.task_modules = ("toxjax_no_such_task_module",)
    with pytest.raises(ImportError, match="config.data.task_modules: cannot import"):
        experiment.run_study(config, str(workdir), progress=False)
    assert not workdir.exists()


def test_a_job_on_a_run_in_use_is_refused_before_anything_is_written(tmp_path):
    """Jobs may share a study workdir (one per strategy), never a run directory."""
    workdir = tmp_path / "study"
    config = study_smoke.get_config()
    plan = plan_lib.plan_study(config, str(workdir))
    assert experiment.run_directories(plan) == sorted(
        str(workdir / run_plan.name) for run_plan in plan.runs
    )
    busy = run_plan(config, "inst", str(workdir)).directory
    with workdir_lock.hold(busy, "another study job"):
        with pytest.raises(workdir_lock.WorkdirInUseError, match="another study job"):
            experiment.run_study(config, str(workdir), progress=False)
        written = [
            os.path.join(root, name) for root, _, names in os.walk(workdir) for name in names
        ]
        assert written == [os.path.join(busy, workdir_lock.LOCK_NAME)]
