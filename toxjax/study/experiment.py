"""The study in one command: score, build tasks, train and evaluate one model per strategy.

    python -m toxjax.study --config=toxjax/configs/demo.py --workdir=/tmp/toxjax_demo

Stages, each skipped when its output is already complete (so a rerun, or a restart after a
preemption, only does what is left):

    1. score     config.study.corpus -> WORKDIR/scored (toxjax.scoring.job; resumes shard by shard)
    2. vocab     byte vocabulary, a SentencePiece model trained on the scored corpus
                 (WORKDIR/vocab/, kept), or a given .model file
    3. tasks     toxjax.data.tasks.register_toxicity_tasks over WORKDIR/scored, the public path
    4. train     per strategy, WORKDIR/<strategy>/ with data.task = that strategy's task;
                 finished when the latest checkpoint step is config.train.num_steps
    5. eval      per strategy, toxjax.evaluation.evaluator.Evaluator.evaluate_checkpoint
                 (conditioned and unconditioned RTP, utility, bias AUC); finished when
                 WORKDIR/<strategy>/eval/step_<num_steps>.json exists for the same eval config.
                 An evaluation-only variant (runs.EVAL_ONLY_FIELDS) trains nothing: it
                 evaluates the checkpoints of runs.Run.trained_as, trained once
    6. report    WORKDIR/results.json, results.md and PNG plots (toxjax.study.reporting); always
                 rebuilt, from every strategy of the workdir that has finished its evaluation

The study config is a full training config (model/mesh/data/optim/train/eval, as in
toxjax/configs/default.py) plus a `study` section, see toxjax/configs/demo.py. Every strategy trains with
the same model, budget and seeds; only data.task differs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections
from absl import logging

from toxjax import fileio
from toxjax.data import tasks, vocab
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.evaluation import evaluator
from toxjax.interop import hf_import
from toxjax.scoring import job
from toxjax.study import reporting, runs
from toxjax.training import checkpoints, train

SCORED_SUBDIR = "scored"
VOCAB_SUBDIR = "vocab"
EVAL_STAMP = "eval_config.json"  # next to eval/: which eval config produced the eval json
CONFIG_JSON = "config.json"
VOCAB_STAMP = "vocabulary.json"  # which vocabulary (by content) a run's checkpoints were trained on
VOCABULARIES = ("byte", "spm")  # or a path to a SentencePiece .model file


# ----------------------------------------------------------------------------------------------
# Small helpers.


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Logs a stage's start and its elapsed time (long work must show progress)."""
    logging.info("study: %s ...", name)
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    if timings is not None:
        timings[name] = elapsed
    logging.info("study: %s done in %.1fs", name, elapsed)


def _write_json(path: str, value: Any) -> None:
    fileio.write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: str) -> Any:
    return json.loads(fileio.read_bytes(path).decode("utf-8"))


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _is_chief() -> bool:
    import jax

    return jax.process_index() == 0


def _chief_then_sync(name: str, fn: Callable[[], Any]) -> None:
    """Runs `fn` on process 0 only; the other processes wait for it (shared outputs)."""
    import jax

    if jax.process_count() == 1:
        fn()
        return
    if _is_chief():
        fn()
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"toxjax.study.experiment:{name}")


def study_strategies(config: ml_collections.ConfigDict) -> list[Strategy]:
    """config.study.strategies as Strategy values (a comma-separated string works too)."""
    value = config.study.strategies
    # --config.study.strategies=base,inst arrives as ("base,inst",): split every element.
    parts = [value] if isinstance(value, str) else list(value)
    names = [name.strip() for part in parts for name in str(part).split(",") if name.strip()]
    strategies = [Strategy.parse(name) for name in names]
    if not strategies:
        raise ValueError("config.study.strategies is empty: name at least one strategy")
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"config.study.strategies lists a strategy twice: {names}")
    return strategies


def conditioning_format(config: ml_collections.ConfigDict) -> ConditioningFormat:
    conditioning = config.study.get("conditioning") or {}
    if hasattr(conditioning, "to_dict"):
        conditioning = conditioning.to_dict()
    return ConditioningFormat.from_dict(conditioning)


def study_formats(config: ml_collections.ConfigDict) -> list[ConditioningFormat]:
    """The study's format and each variant's (wordings only: thresholds need no new pieces)."""
    base = conditioning_format(config)
    formats = [base]
    for spec in runs.variant_specs(config):
        overrides = runs.parse_overrides(runs.parse_variant(spec)[1])
        fields = {k: v for k, v in overrides.items() if k not in runs.VARIANT_STUDY_FIELDS}
        formats.append(dataclasses.replace(base, **fields))
    return formats


def has_segment(config: ml_collections.ConfigDict) -> bool:
    """Whether a study run uses SEGMENT (its corpus needs segment scores, its vocabulary the
    control tokens)."""
    runs_ = runs.study_runs(config, study_strategies(config))
    return any(run.strategy is Strategy.SEGMENT for run in runs_)


def segment_spec(config: ml_collections.ConfigDict) -> str:
    """The scoring job's --segment for this study: "" unless a run uses SEGMENT."""
    return str(config.study.get("segment", "sentence")) if has_segment(config) else ""


def scored_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """WORKDIR/scored, or WORKDIR/scored-<segmentation> for a study with SEGMENT (another
    scoring run: the same documents and scores plus segment scores)."""
    if config.study.scored_dir:
        return config.study.scored_dir
    segment = segment_spec(config)
    name = f"{SCORED_SUBDIR}-{segment.replace(':', '')}" if segment else SCORED_SUBDIR
    return fileio.join(workdir, name)


def run_workdir(workdir: str, run: runs.Run | Strategy | str) -> str:
    """WORKDIR/<run name> (a plain strategy's seed-0 run is WORKDIR/<strategy>)."""
    name = run.name if isinstance(run, runs.Run) else Strategy.parse(run).value
    return fileio.join(workdir, name)


def eval_json_path(workdir: str, run: runs.Run | Strategy | str, step: int) -> str:
    return fileio.join(run_workdir(workdir, run), evaluator.EVAL_SUBDIR, f"step_{step}.json")


# ----------------------------------------------------------------------------------------------
# Stages 1-3: scoring, vocabulary, tasks.


def score_stage(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> str:
    """Scores config.study.corpus into the scored directory, resuming; returns that directory."""
    study = config.study
    fmt = conditioning_format(config)
    output_dir = scored_dir(config, workdir)
    job.score_corpus(
        study.corpus,
        output_dir,
        study.scorer,
        job.ScoreOptions(
            text_field=study.text_field,
            records_per_shard=int(study.records_per_shard),
            on_bad_record=study.on_bad_record,
            threshold=fmt.threshold,
            attribute=fmt.attribute,
            tfds_data_dir=study.tfds_data_dir or None,
            segment=segment_spec(config),
        ),
        progress=progress,
    )
    return output_dir


def vocabulary_path(config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """Where the vocabulary lives (None for bytes); trained SentencePiece models are named by
    their settings and signal pieces, so a changed conditioning format gets a new one."""
    spec = config.study.vocabulary
    if spec == "byte":
        return None
    if spec == "spm":
        settings = {
            "vocab_size": int(config.study.vocab_size),
            "max_docs": int(config.study.vocab_max_docs),
            "pieces": [
                p
                for f in study_formats(config)
                for p in vocab.signal_pieces(f, segment=has_segment(config))
            ],
            # What the scored corpus is (not where it is, so a moved workdir keeps its model).
            "corpus": [config.study.corpus, config.study.text_field, config.study.scorer],
        }
        name = f"spm{settings['vocab_size']}-{_fingerprint(settings)[:8]}"
        return fileio.join(workdir, VOCAB_SUBDIR, name) + ".model"
    if spec.endswith(".model"):
        return spec
    raise ValueError(
        f"config.study.vocabulary={spec!r}: expected one of {VOCABULARIES} or a path to a "
        "SentencePiece .model file"
    )


def vocabulary_identity(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
    """What a run's token ids mean: the byte vocabulary, or the SentencePiece model's sha256
    (content, not name: a model retrained identically under a new name is the same)."""
    path = vocabulary_path(config, workdir)
    if path is None:
        return {"vocabulary": "byte"}
    digest = hashlib.sha256(fileio.read_bytes(path)).hexdigest()
    return {"vocabulary": path.rsplit("/", 1)[-1], "sha256": digest}


def check_vocabulary(run_workdir: str, identity: Mapping[str, str]) -> None:
    """Refuses a run whose checkpoints were trained on another vocabulary than the study's
    (a rerun in the same workdir with other strategies can train a new one)."""
    path = fileio.join(run_workdir, VOCAB_STAMP)
    if not fileio.exists(path):
        logging.warning(
            "study: %s has checkpoints but no %s (trained before it was recorded): its "
            "vocabulary cannot be checked",
            run_workdir,
            VOCAB_STAMP,
        )
        return
    recorded = _read_json(path)
    if recorded.get("sha256") != identity.get("sha256"):  # none for the byte vocabulary
        raise ValueError(
            f"{run_workdir} was trained on vocabulary {recorded['vocabulary']} "
            f"(sha256 {recorded.get('sha256', '-')}), but this study uses "
            f"{identity['vocabulary']} (sha256 {identity.get('sha256', '-')}): its token ids "
            "mean other pieces here. The vocabulary follows the strategies and the conditioning "
            "format (SEGMENT adds its tokens): rerun with the settings that trained it, or use a "
            "fresh --workdir"
        )


def vocab_stage(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True):
    """The study's seqio vocabulary, training a SentencePiece model on first use."""
    import seqio

    path = vocabulary_path(config, workdir)
    if path is None:
        return seqio.ByteVocabulary()
    if config.study.vocabulary == "spm" and not fileio.exists(path):

        def train() -> None:
            max_docs = int(config.study.vocab_max_docs)
            vocab.train_vocabulary(
                vocab.iter_texts(scored_dir(config, workdir)),
                path[: -len(".model")],
                vocab_size=int(config.study.vocab_size),
                fmt=conditioning_format(config),
                extra_formats=study_formats(config)[1:],
                segment=has_segment(config),
                max_docs=None if max_docs < 0 else max_docs,
                progress=progress,
            )

        _chief_then_sync("vocab", train)
    elif not fileio.exists(path):
        raise FileNotFoundError(f"config.study.vocabulary: no SentencePiece model at {path!r}")
    return seqio.SentencePieceVocabulary(path)


def base_format(config: ml_collections.ConfigDict, workdir: str) -> ConditioningFormat:
    """The study's conditioning format, its threshold taken at config.study.threshold_quantile
    of the scored corpus when that is set (>= 0)."""
    quantile = float(config.study.get("threshold_quantile", -1.0))
    overrides = {"threshold_quantile": quantile} if quantile >= 0 else {}
    return runs.run_format(conditioning_format(config), overrides, scored_dir(config, workdir))


def family_name(config: ml_collections.ConfigDict, run: runs.Run) -> str:
    """The SeqIO task family a run trains on: the study's, or its variant's."""
    return f"{config.study.name}_{run.family}" if run.family else config.study.name


def cooldown_fraction(config: ml_collections.ConfigDict, run: runs.Run) -> float:
    """The run's signal-free cooldown share (a variant's, else config.study.cooldown_fraction)."""
    return float(run.overrides().get("cooldown_fraction", config.study.get("cooldown_fraction", 0)))


def tasks_stage(
    config: ml_collections.ConfigDict, workdir: str, vocabulary, study_runs: list[runs.Run]
) -> dict[str, str]:
    """Registers the study's task families the way a user would (one per variant); returns
    {run name: task or mixture}."""
    study = config.study
    fmt = base_format(config, workdir)
    families: dict[str, list[runs.Run]] = {}
    for run in study_runs:
        families.setdefault(run.family, []).append(run)
    chosen = {}
    for members in families.values():
        overrides = members[0].overrides()
        family_fmt = runs.run_format(fmt, overrides, scored_dir(config, workdir))
        untagged = float(overrides.get("untagged_rate", study.untagged_rate))
        name = family_name(config, members[0])
        strategies = list(dict.fromkeys(run.strategy for run in members))
        if cooldown_fraction(config, members[0]) > 0 and Strategy.BASE not in strategies:
            strategies.append(Strategy.BASE)  # the cooldown draws from it
        mixture_with = None
        if untagged > 0:
            # Korbak et al. (2023): a share of untagged (BASE) data keeps an unconditional mode.
            mixture_with = [(f"{name}_{Strategy.BASE.value}", untagged)]
            if Strategy.BASE not in strategies:
                strategies.append(Strategy.BASE)  # the untagged share is drawn from it
        registered = tasks.register_toxicity_tasks(
            name,
            scored_dir(config, workdir),
            vocabulary=vocabulary,
            fmt=family_fmt,
            strategies=strategies,
            validation_fraction=float(study.validation_fraction),
            mixture_with=mixture_with,
        )
        logging.info("study: family %s: %s", name, family_fmt)
        for run in members:
            mixed = registered.get(run.strategy.value + tasks.MIX_SUFFIX)
            chosen[run.name] = mixed or registered[run.strategy.value]
    return chosen


# ----------------------------------------------------------------------------------------------
# Stages 4-5: one model per strategy.


def run_config_for(
    config: ml_collections.ConfigDict, run: runs.Run, task_name: str
) -> ml_collections.ConfigDict:
    """The training config of one run: the study config without `study`, on its task, with
    its training seed (init, dropout and data order all move with it)."""
    run_config = copy.deepcopy(config)
    with run_config.unlocked():
        del run_config["study"]
    run_config.data.task = task_name
    cooldown = cooldown_fraction(config, run)
    if cooldown > 0 and run.strategy in (Strategy.MEDA, Strategy.INST, Strategy.SEGMENT):
        run_config.data.cooldown_fraction = cooldown  # MeCo: end on untagged text
        run_config.data.cooldown_task = f"{family_name(config, run)}_{Strategy.BASE.value}"
    run_config.train.seed = int(config.train.seed) + run.seed
    run_config.data.seed = int(config.data.seed) + run.seed
    run_config.eval.model_name = run.name  # report rows are named by run
    run_config.eval.strategy = ""  # the conditioning of the task it was trained on
    return run_config


class StudyInterrupted(RuntimeError):
    """Training was stopped before its last step; a rerun resumes it."""


def trained_step(run_workdir: str) -> int | None:
    """Latest checkpoint step of a run directory, None when it has none."""
    directory = fileio.join(run_workdir, checkpoints.CHECKPOINT_SUBDIR)
    if not fileio.exists(directory):
        return None
    checkpointer = checkpoints.Checkpointer(directory, read_only=True, async_save=False)
    try:
        return checkpointer.latest_step()
    finally:
        checkpointer.close()


def train_strategy(
    run_config: ml_collections.ConfigDict,
    run_workdir: str,
    vocabulary: Mapping[str, str] | None = None,
) -> bool:
    """Trains (or resumes) unless finished; True if it trained.

    vocabulary: the study's vocabulary_identity, recorded with the run and checked against
    the one its checkpoints were trained on before they are reused or resumed.
    """
    num_steps = int(run_config.train.num_steps)
    latest = trained_step(run_workdir)
    if latest is not None and vocabulary is not None:
        check_vocabulary(run_workdir, vocabulary)
    if latest is not None and latest > num_steps:
        raise ValueError(
            f"{run_workdir} holds a checkpoint at step {latest}, beyond "
            f"config.train.num_steps={num_steps}: use a fresh --workdir for a shorter budget"
        )
    if latest == num_steps:
        logging.info("study: %s already trained to step %d: skipping", run_workdir, latest)
        return False
    if _is_chief():
        fileio.make_dirs(run_workdir)
        _write_json(fileio.join(run_workdir, CONFIG_JSON), _config_json(run_config))
        if vocabulary is not None:
            _write_json(fileio.join(run_workdir, VOCAB_STAMP), dict(vocabulary))
    state = train.train_and_evaluate(
        run_config, run_workdir, warm_start_fn=hf_import.warm_starter(run_config)
    )
    reached = int(state.step)
    if reached < num_steps:  # a stop request (SIGTERM, preemption) saved and returned early
        raise StudyInterrupted(
            f"training in {run_workdir} stopped at step {reached} of {num_steps} (stop request); "
            "its checkpoint is saved: rerun the same command to resume"
        )
    return True


def _eval_settings(
    run_config: ml_collections.ConfigDict, checkpoint_dir: str | None = None
) -> dict[str, Any]:
    """What an evaluation result depends on besides the checkpoint (and whose checkpoint, when
    it is another run's)."""
    as_json = _config_json(run_config)
    settings = {
        "eval": as_json["eval"],
        "model": as_json["model"],
        "task": run_config.data.task,
        "results_version": evaluator.RESULTS_VERSION,
    }
    if checkpoint_dir:
        settings["checkpoints"] = checkpoint_dir.rstrip("/").rsplit("/", 1)[-1]
    return settings


def evaluate_strategy(
    run_config: ml_collections.ConfigDict,
    run_workdir: str,
    run_evaluator: evaluator.Evaluator,
    checkpoint_dir: str | None = None,
) -> dict[str, Any]:
    """The eval results of the final checkpoint (the run's own, or checkpoint_dir's), computed
    unless the same eval config and results version already produced them (a changed
    config.eval, or an evaluator that reports more, re-evaluates)."""
    step = int(run_config.train.num_steps)
    path = fileio.join(run_workdir, evaluator.EVAL_SUBDIR, f"step_{step}.json")
    stamp_path = fileio.join(run_workdir, EVAL_STAMP)
    if checkpoint_dir == run_workdir:
        checkpoint_dir = None
    settings = _eval_settings(run_config, checkpoint_dir)
    if fileio.exists(path) and fileio.exists(stamp_path) and _read_json(stamp_path) == settings:
        logging.info("study: %s already evaluated at step %d: reusing %s", run_workdir, step, path)
        return _read_json(path)
    results = run_evaluator.evaluate_checkpoint(step=step, checkpoint_dir=checkpoint_dir)
    if _is_chief():
        _write_json(stamp_path, settings)
    return results


# ----------------------------------------------------------------------------------------------
# The study.


def finished_evaluations(
    workdir: str, num_steps: int, study_runs: list[runs.Run]
) -> dict[str, dict[str, Any]]:
    """Eval results, at num_steps, of the study's runs and of every plain strategy in the
    workdir (strategies trained by other jobs sharing the workdir are included), run order."""
    candidates = [*study_runs, *(runs.Run(strategy) for strategy in Strategy)]
    found = {}
    for run in candidates:
        path = eval_json_path(workdir, run, num_steps)
        if run.name not in found and fileio.exists(path):
            found[run.name] = _read_json(path)
    return found


def report_stage(
    config: ml_collections.ConfigDict,
    workdir: str,
    evaluations: Mapping[str, Mapping[str, Any]],
    trained_as: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """results.json, results.md and the plots from the strategies' eval results.

    trained_as: run name -> the run whose training it evaluated, when another's."""
    trained_as = trained_as or {}
    train_logs = {
        name: reporting.read_train_log(fileio.join(workdir, trained_as.get(name, name)))
        for name in evaluations
    }
    results = reporting.build_results(evaluations, train_logs, baseline=config.study.baseline)
    return reporting.write_report(
        results, workdir, train_logs=train_logs, baseline=config.study.baseline
    )


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    progress: bool = True,
    prepare_only: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs every unfinished stage; returns results.json's content (keyed by strategy).

    prepare_only: stop after scoring and the vocabulary, the inputs every strategy shares (so
    parallel per-strategy jobs do not race to create them). compiler_options: XLA options of
    the evaluation's compiled functions.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    timings: dict[str, float] = {}
    strategies = study_strategies(config)
    fileio.make_dirs(workdir)
    with stage("score corpus", timings):
        _chief_then_sync("score", lambda: score_stage(config, workdir, progress=progress))
    with stage("vocabulary", timings):
        vocabulary = vocab_stage(config, workdir, progress=progress)
    if prepare_only:
        logging.info("study: shared inputs ready in %s (--prepare_only)", workdir)
        return {}
    identity = vocabulary_identity(config, workdir)
    study_runs = runs.study_runs(config, strategies)
    with stage("register tasks", timings):
        task_names = tasks_stage(config, workdir, vocabulary, runs.with_trained_runs(study_runs))
    for run in study_runs:
        trained = run.trained_as()
        if trained == run:
            logging.info("study: %s trains on task %s", run.name, task_names[run.name])
        else:
            logging.info("study: %s evaluates %s's checkpoints", run.name, trained.name)

    bar = tqdm(study_runs, desc="study", unit="model", disable=not progress, dynamic_ncols=True)
    for run in bar:
        bar.set_postfix_str(run.name)
        run_config = run_config_for(config, run, task_names[run.name])
        directory = run_workdir(workdir, run)
        # Built before training: a bad prompt or label file fails before any model exists.
        run_evaluator = evaluator.Evaluator(
            run_config, directory, progress=progress, compiler_options=compiler_options
        )
        trained = run.trained_as()
        trained_dir = run_workdir(workdir, trained)
        with stage(f"train {trained.name}", timings):
            train_strategy(
                run_config_for(config, trained, task_names[trained.name]), trained_dir, identity
            )
        with stage(f"evaluate {run.name}", timings):
            evaluate_strategy(run_config, directory, run_evaluator, trained_dir)

    if not _is_chief():
        return {}
    with stage("report", timings):
        evaluations = finished_evaluations(workdir, int(config.train.num_steps), study_runs)
        trained_as = {run.name: run.trained_as().name for run in study_runs}
        paths = report_stage(config, workdir, evaluations, trained_as)
    logging.info(
        "study: finished in %.1fs (%s); results in %s",
        time.perf_counter() - started,
        ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items()),
        paths["markdown"],
    )
    return _read_json(paths["json"])
