"""Tests of the Evaluator: a checkpoint written by the training code is restored and every
stage (RTP, utility, bias, perplexity) lands in step_<N>.json, the markdown summary and
TensorBoard; engines are built once per evaluator and never shared between evaluators."""

import glob
import json
import math
import os

import jax
import numpy as np
import pytest

from toxjax.configs import tiny
from toxjax.evaluation import evaluator, rtp
from toxjax.evaluation.evaluator import Evaluator
from toxjax.inference import loglik, sampling
from toxjax.training import checkpoints, train

FAST_COMPILE = {"xla_backend_optimization_level": 0}
SUBSETS = ("all", "toxic", "nontoxic", "challenging")


def small_config():
    config = tiny.get_config()
    config.model.d_model = 32  # tiny's shapes, narrower: evaluation cost is compile time
    config.model.mlp_dim = 64
    ev = config.eval
    ev.rtp_num_prompts = 8
    ev.rtp.num_samples = 4
    ev.rtp.max_new_tokens = 8
    ev.generate_batch_size = 32  # the 8 prompts x 4 samples in one call
    ev.utility_limit = 8
    ev.bias_limit = 8
    ev.perplexity_batches = 1
    ev.perplexity_batch_size = 8
    return config


def check_real_text(saved):
    """The toxic-signal run, intervals, within-model control and the real-text metrics."""
    toxic_run = saved["rtp"]["toxic_signal"]
    assert toxic_run["prefix"] == "The following text is toxic:\n"
    spans = saved["rtp_intervals"]
    assert set(spans) == {"conditioned", "unconditioned", "toxic_signal"}
    for condition in spans.values():
        tp = condition["all"]["toxicity_probability"]
        assert tp["low"] <= tp["estimate"] <= tp["high"] and tp["n"] == 8
        assert len(condition["per_prompt"]["any_toxic"]) == 8
    control = saved["controllability"]
    assert set(control) == {"vs_toxic_signal", "vs_unconditioned"}
    real = saved["real_text"]
    assert real["signals"] == {
        "nontoxic": "The following text is non-toxic:\n",
        "toxic": "The following text is toxic:\n",
        "none": "",
    }
    assert real["heldout_clean"]["num_documents"] == 8
    assert real["heldout_clean"]["perplexity"] > 1.0
    assert real["cloze"]["num_examples"] == 8
    steer = real["steerability"]
    assert steer["num_prompts"] == 8 == steer["num_usable"] + sum(steer["skipped"].values())
    assert set(real["detection"]) == {"paradetox", "tweets", "wikipedia"}
    paradetox = real["detection"]["paradetox"]
    assert paradetox["num_examples"] == 8 and paradetox["num_positive"] == 4
    assert 0.0 <= paradetox["generative"]["auc"]["estimate"] <= 1.0


class RecordingWriter:
    def __init__(self):
        self.scalars = {}

    def write_scalars(self, step, scalars):
        self.scalars[step] = dict(scalars)

    def flush(self):
        pass


@pytest.mark.slow
def test_evaluate_checkpoint_writes_every_metric(tmp_path):
    config = small_config()
    config.eval.real_text = "packaged"
    config.eval.real_text_limit = 8
    workdir = str(tmp_path / "inst_run")
    setup = train.create_setup(config)
    state = train.create_train_state(setup, train.init_rng(config))
    saver = checkpoints.Checkpointer(os.path.join(workdir, checkpoints.CHECKPOINT_SUBDIR))
    saver.save(3, state, {"model_config": setup.model_config_dict}, force=True)
    saver.close()

    params, step = checkpoints.restore_run_params(
        config, workdir, mesh=setup.mesh, rules=setup.rules
    )  # params only, latest step
    assert step == 3
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(FileNotFoundError, match="no step 7"):
        checkpoints.restore_run_params(config, workdir, step=7, mesh=setup.mesh, rules=setup.rules)

    results = Evaluator(
        config, workdir, mesh=setup.mesh, progress=False, compiler_options=FAST_COMPILE
    ).evaluate_checkpoint()
    path = os.path.join(workdir, "eval", "step_3.json")
    with open(path) as f:
        saved = json.load(f)
    assert saved == results
    assert saved["step"] == 3 and saved["model"] == "inst_run" and saved["strategy"] == "inst"

    check_real_text(saved)
    rtp = saved["rtp"]
    assert rtp["conditioned"]["prefix"] == "The following text is non-toxic:\n"
    assert rtp["unconditioned"]["prefix"] == ""
    for run in rtp.values():
        assert run["num_prompts"] == 8
        assert run["scorer"].startswith("profanity_check@")
        for subset in SUBSETS:
            assert {"expected_max_toxicity", "toxicity_probability"} <= set(run["metrics"][subset])
        overall = run["metrics"]["all"]
        assert 0.0 <= overall["expected_max_toxicity"] <= 1.0
        assert 0.0 <= overall["toxicity_probability"] <= 1.0
    records = os.path.join(workdir, "eval", "step_3", "rtp_conditioned.jsonl")
    with open(records) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 8 and all(len(r["continuations"]) == 4 for r in lines)
    assert all(r["prefix"] == rtp["conditioned"]["prefix"] for r in lines)

    cloze = saved["utility"]["demo_cloze"]
    assert cloze["num_examples"] == 8 and 0.0 <= cloze["acc"] <= 1.0
    assert 0.0 <= cloze["acc_norm"] <= 1.0
    detection = saved["bias"]["demo_toxicity_detection"]
    assert detection["num_examples"] == 8 and 0.0 <= detection["auc"] <= 1.0
    heldout = saved["perplexity"]
    assert heldout["task"] == "toxjax_demo_inst" and heldout["split"] == "validation"
    assert math.isfinite(heldout["perplexity"]) and heldout["perplexity"] > 1.0

    with open(os.path.join(workdir, "eval", "step_3.md")) as f:
        summary = f.read()
    assert "step 3" in summary and "demo_cloze" in summary and "held-out perplexity" in summary
    assert "profanity_check@" in summary  # the scorer, since EMT/TP depend on it
    assert saved["sampling"]["banned_ids"] == "0,259-383"  # PAD and the padded vocab rows
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))


class CountingBuilds:
    """Wraps an engine builder (real or fake) and records every call."""

    def __init__(self, build):
        self.build, self.engines = build, []

    def __call__(self, params, *args, **kwargs):
        engine = self.build(params, *args, **kwargs)
        self.engines.append(engine)
        return engine


class FakeEngine:
    def __init__(self, params, *args, **kwargs):
        self.params = params


def test_disabled_stages_are_skipped_and_engines_are_reused_with_new_params(tmp_path, monkeypatch):
    config = small_config()
    config.eval.rtp_prompts = ""
    config.eval.bias_tasks = ()
    config.eval.utility_limit = 2
    config.eval.strategy = "base"
    setup = train.create_setup(config)
    params = train.create_train_state(setup, train.init_rng(config)).params
    loglik_builds = CountingBuilds(loglik.make_loglikelihood_fn)
    generate_builds = CountingBuilds(FakeEngine)
    monkeypatch.setattr(loglik, "make_loglikelihood_fn", loglik_builds)
    monkeypatch.setattr(sampling, "make_generate_fn", generate_builds)
    writer = RecordingWriter()
    evaluate = Evaluator(
        config,
        str(tmp_path),
        mesh=setup.mesh,
        rules=setup.rules,
        progress=False,
        compiler_options=FAST_COMPILE,
    )
    assert evaluate.stages() == ["utility", "perplexity"]
    first = evaluate(params, 5, writer=writer)
    assert set(first["timing_s"]) == {"utility", "perplexity"}
    assert "rtp" not in first and "bias" not in first
    assert first["strategy"] == "base" and first["prefix"] == ""
    assert writer.scalars[5]["eval/heldout/perplexity"] == pytest.approx(
        first["perplexity"]["perplexity"]
    )
    assert os.path.exists(tmp_path / "eval" / "step_5.json")

    # A later evaluation (train_and_eval) reuses the compiled engine with the new params.
    sharper = jax.tree.map(lambda x: x * 4.0, params)
    second = evaluate.evaluate(sharper, 6, writer=writer)
    (engine,) = loglik_builds.engines  # built once, for both evaluations
    assert generate_builds.engines == []  # RTP is off: no generate engine
    np.testing.assert_array_equal(
        np.asarray(engine.params["token_embedding"]), np.asarray(sharper["token_embedding"])
    )
    assert second["perplexity"]["perplexity"] != first["perplexity"]["perplexity"]


def test_evaluators_build_their_own_engines_and_share_none(monkeypatch):
    config = small_config()
    loglik_builds = CountingBuilds(FakeEngine)
    generate_builds = CountingBuilds(FakeEngine)
    monkeypatch.setattr(loglik, "make_loglikelihood_fn", loglik_builds)
    monkeypatch.setattr(sampling, "make_generate_fn", generate_builds)
    setup = train.create_setup(config)
    params = train.create_train_state(setup, train.init_rng(config)).params
    other_params = jax.tree.map(lambda x: x * 2.0, params)
    first, second = (
        Evaluator(config, "/unused", mesh=setup.mesh, rules=setup.rules, progress=False)
        for _ in range(2)
    )

    assert first.loglikelihood_fn(params) is first.loglikelihood_fn(other_params)
    assert first.generate_fn(params) is first.generate_fn(other_params)
    assert len(loglik_builds.engines) == len(generate_builds.engines) == 1
    assert first.generate_fn(params, rtp.RTPConfig(max_new_tokens=3)) is not first.generate_fn(
        params
    )  # other sampling settings: another engine
    assert len(generate_builds.engines) == 2

    own = second.loglikelihood_fn(params)
    assert own is not first.loglikelihood_fn(other_params)
    assert second.generate_fn(params) not in generate_builds.engines[:2]
    assert len(loglik_builds.engines) == 2 and len(generate_builds.engines) == 3
    # Swapping params on one evaluator's engines leaves the other's alone.
    np.testing.assert_array_equal(
        np.asarray(own.params["token_embedding"]), np.asarray(params["token_embedding"])
    )
    np.testing.assert_array_equal(
        np.asarray(first.loglikelihood_fn(other_params).params["token_embedding"]),
        np.asarray(other_params["token_embedding"]),
    )
    assert second.loglikelihood_fn(params) is own and len(loglik_builds.engines) == 2


def test_config_helpers_reject_bad_values():
    assert evaluator.parse_paths("toxigen=/a.csv, social_bias_frames=/b.csv") == {
        "toxigen": "/a.csv",
        "social_bias_frames": "/b.csv",
    }
    with pytest.raises(ValueError, match="not task=path"):
        evaluator.parse_paths("toxigen")
    assert evaluator.id_ranges([262, 0, 259, 260, 261, 5]) == "0,5,259-262"


BAD_FILES = {
    "missing": (None, r"bad\.{ext}: no such file"),
    "empty": (b"", r"bad\.{ext}: empty"),
    "malformed": (b'{"prompt": {"text": "fine"}}\n{not json\n', r"bad\.jsonl:2: invalid JSON"),
}


def test_bad_real_text_files_fail_before_any_model(tmp_path, monkeypatch):
    import shutil

    from toxjax.datasets import real_corpus

    directory = tmp_path / "real"
    shutil.copytree(real_corpus.PACKAGED_DIR, directory)
    config = small_config()
    config.eval.real_text = str(directory)
    monkeypatch.setattr(  # building a model or engine here would be too late
        "toxjax.model.decoder.Decoder.__init__", lambda *a, **k: pytest.fail("model built")
    )
    (directory / "detection_tweets.jsonl").write_text('{"text": "ok", "label": 1}\n{broken\n')
    with pytest.raises(ValueError, match=r"detection_tweets\.jsonl:2: invalid JSON"):
        Evaluator(config, str(tmp_path / "run"))
    (directory / "cloze.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="cloze.jsonl"):
        Evaluator(config, str(tmp_path / "run"))


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_prompt_file_fails_naming_it_before_any_model(tmp_path, monkeypatch, case):
    content, message = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_bytes(content)
    config = small_config()
    config.eval.rtp_prompts = str(path)
    monkeypatch.setattr(  # building a model or engine here would be too late
        "toxjax.model.decoder.Decoder.__init__", lambda *a, **k: pytest.fail("model built")
    )
    with pytest.raises(ValueError, match=message.format(ext="jsonl")):
        Evaluator(config, str(tmp_path / "run"))


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_label_file_fails_naming_it_before_any_model(tmp_path, monkeypatch, case):
    content, message = BAD_FILES[case]
    if case == "malformed":
        content = b"text,toxicity_human\nfine,1,extra\n"
        message = r"bad\.csv: line 2: more cells than header columns"
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_bytes(content)
    config = small_config()
    config.eval.rtp_prompts = ""
    config.eval.bias_tasks = ("toxigen",)
    config.eval.bias_paths = f"toxigen={path}"
    monkeypatch.setattr(
        "toxjax.model.decoder.Decoder.__init__", lambda *a, **k: pytest.fail("model built")
    )
    with pytest.raises(ValueError, match=message.format(ext="csv")):
        Evaluator(config, str(tmp_path / "run"))


def test_unknown_task_names_fail_when_the_evaluator_is_built(tmp_path):
    config = small_config()
    config.eval.rtp_prompts = ""
    config.eval.utility_tasks = ("piqa", "no_such_task")
    with pytest.raises(ValueError, match="utility_tasks: unknown task 'no_such_task'"):
        Evaluator(config, str(tmp_path / "run"))
    config.eval.utility_tasks = ()
    config.eval.bias_tasks = ("toxigen",)
    with pytest.raises(ValueError, match="bias task 'toxigen' needs task=path"):
        Evaluator(config, str(tmp_path / "run"))


def test_the_jax_scorer_shards_over_the_evaluation_mesh(tmp_path):
    from toxjax.scoring import detoxify_jax
    from toxjax.testing import detoxify_checkpoint

    config = small_config()
    config.eval.scorer = (
        f"detoxify-jax:{detoxify_checkpoint.build_tiny_detoxify_checkpoint(str(tmp_path))}"
    )
    setup = train.create_setup(config)
    scorer = Evaluator(config, "/unused", mesh=setup.mesh, rules=setup.rules).scorer()
    assert isinstance(scorer, detoxify_jax.DetoxifyJaxScorer) and scorer.mesh is setup.mesh
    batch_axes = [a for a in setup.mesh.axis_names if a in ("data", "fsdp")]
    assert scorer.data_shards == int(np.prod([setup.mesh.shape[a] for a in batch_axes]))
    scores = scorer.score(["you idiot", "a calm river"])["toxicity"]
    assert scores.shape == (2,) and np.all((scores > 0) & (scores < 1))
