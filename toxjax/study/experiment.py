"""The study in one command: score, build tasks, train and evaluate one model per strategy.

    python -m toxjax.study --config=toxjax/configs/demo.py --workdir=/tmp/toxjax_demo

The config is read once, into a frozen toxjax.study.plan.StudyPlan (validated, every bad value
named by its config field); the stages below take that plan, not the config. Stages, each
skipped when its output is already complete (so a rerun, or a restart after a preemption, only
does what is left):

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
toxjax/configs/default.py) plus a `study` section, see toxjax/configs/demo.py. Every strategy
trains with the same model, budget and seeds; only data.task differs (plan.run_config).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ml_collections
import numpy as np
from absl import logging

from toxjax import fileio, workdir_lock
from toxjax.data import tasks, vocab
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.evaluation import evaluator
from toxjax.interop import hf_import, judge
from toxjax.scoring import multiprocess_job
from toxjax.study import plan as plan_lib
from toxjax.study import reporting, runs
from toxjax.study.plan import StudyPlan
from toxjax.training import checkpoints, train

if TYPE_CHECKING:
    import seqio

EVAL_STAMP = "eval_config.json"  # next to eval/: which eval config produced the eval json
CONFIG_JSON = "config.json"
VOCAB_STAMP = "vocabulary.json"  # which vocabulary (by content) a run's checkpoints were trained on


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


def _is_chief() -> bool:
    import jax

    return jax.process_index() == 0


def _process_0_says(answer: bool) -> bool:
    """Process 0's answer on every process: a file check may differ between processes (one
    looks after another created the file), and their collectives must not."""
    import jax

    if jax.process_count() == 1:
        return answer
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(answer)))


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


# ----------------------------------------------------------------------------------------------
# Stages 1-3: scoring, vocabulary, tasks.


def score_stage(scoring: plan_lib.ScoringPlan, *, progress: bool = True) -> str:
    """Scores the study's corpus into the scored directory, resuming; returns that directory.

    Every process calls it: on several, they share the shards (multiprocess_job)."""
    multiprocess_job.score_corpus(
        scoring.corpus, scoring.output_dir, scoring.scorer, scoring.options, progress=progress
    )
    return scoring.output_dir


def vocabulary_identity(vocabulary: plan_lib.VocabularyPlan) -> dict[str, str]:
    """What a run's token ids mean: the byte vocabulary, or the SentencePiece model's sha256
    (content, not name: a model retrained identically under a new name is the same)."""
    if vocabulary.path is None:
        return {"vocabulary": "byte"}
    digest = hashlib.sha256(fileio.read_bytes(vocabulary.path)).hexdigest()
    return {"vocabulary": vocabulary.path.rsplit("/", 1)[-1], "sha256": digest}


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


def vocab_stage(
    vocabulary: plan_lib.VocabularyPlan, scored_dir: str, *, progress: bool = True
) -> seqio.Vocabulary:
    """The study's seqio vocabulary, training a SentencePiece model on first use."""
    import seqio

    path = vocabulary.path
    if path is None:
        return seqio.ByteVocabulary()
    if vocabulary.kind == "spm" and not fileio.exists(path):

        def train() -> None:
            # Locked like a run: two jobs that both find no model must not both train it.
            directory = path.rsplit("/", 1)[0] if "/" in path else "."
            with workdir_lock.hold(directory, every_process=False):
                if not fileio.exists(path):  # the other job may have finished it meanwhile
                    train_unlocked()

        def train_unlocked() -> None:
            vocab.train_vocabulary(
                vocab.iter_texts(scored_dir),
                path[: -len(".model")],
                vocab_size=vocabulary.size,
                fmt=vocabulary.formats[0],
                extra_formats=vocabulary.formats[1:],
                segment=vocabulary.segment,
                max_docs=vocabulary.max_docs,
                progress=progress,
            )

        _chief_then_sync("vocab", train)
    elif not fileio.exists(path):
        raise FileNotFoundError(f"config.study.vocabulary: no SentencePiece model at {path!r}")
    return seqio.SentencePieceVocabulary(path)


def base_format(plan: StudyPlan) -> ConditioningFormat:
    """The study's conditioning format, its threshold taken at the plan's threshold_quantile
    of the scored corpus when that is set (>= 0): only known once the corpus is scored."""
    quantile = plan.threshold_quantile
    overrides = {"threshold_quantile": quantile} if quantile >= 0 else {}
    return runs.run_format(plan.conditioning, overrides, plan.paths.scored_dir)


def tasks_stage(plan: StudyPlan, vocabulary: seqio.Vocabulary) -> dict[str, str]:
    """Registers the study's task families the way a user would (one per variant); returns
    {run name: task or mixture} for every run with a task (plan.task_runs)."""
    scored_dir = plan.paths.scored_dir
    fmt = base_format(plan)
    chosen = {}
    for family in plan.families:
        family_fmt = runs.run_format(fmt, dict(family.overrides), scored_dir)
        mixture_with = None
        if family.untagged_rate > 0:
            # Korbak et al. (2023): a share of untagged (BASE) data keeps an unconditional mode.
            mixture_with = [(f"{family.name}_{Strategy.BASE.value}", family.untagged_rate)]
        registered = tasks.register_toxicity_tasks(
            family.name,
            scored_dir,
            vocabulary=vocabulary,
            fmt=family_fmt,
            strategies=list(family.strategies),
            validation_fraction=plan.validation_fraction,
            mixture_with=mixture_with,
        )
        logging.info("study: family %s: %s", family.name, family_fmt)
        for name, strategy in family.members:
            mixed = registered.get(strategy.value + tasks.MIX_SUFFIX)
            chosen[name] = mixed or registered[strategy.value]
    return chosen


# ----------------------------------------------------------------------------------------------
# Stages 4-5: one model per run.


class StudyInterrupted(RuntimeError):
    """Training was stopped before its last step; a rerun resumes it."""


def trained_step(run_workdir: str) -> int | None:
    """Latest checkpoint step of a run directory, None when it has none."""
    directory = fileio.join(run_workdir, checkpoints.CHECKPOINT_SUBDIR)
    if not _process_0_says(fileio.exists(directory)):
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
    paths: plan_lib.StudyPaths, num_steps: int, study_runs: Sequence[runs.Run]
) -> dict[str, dict[str, Any]]:
    """Eval results, at num_steps, of the study's runs and of every plain strategy in the
    workdir (strategies trained by other jobs sharing the workdir are included), run order."""
    candidates = [*study_runs, *(runs.Run(strategy) for strategy in Strategy)]
    found = {}
    for run in candidates:
        path = paths.eval_json(run, num_steps)
        if run.name not in found and fileio.exists(path):
            found[run.name] = _read_json(path)
    return found


def report_stage(plan: StudyPlan, evaluations: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """results.json, results.md and the plots from the runs' eval results (a run that evaluates
    another's checkpoints shows that run's training log)."""
    workdir = plan.paths.workdir
    trained_as = {run_plan.name: run_plan.trained_as for run_plan in plan.runs}
    train_logs = {
        name: reporting.read_train_log(fileio.join(workdir, trained_as.get(name, name)))
        for name in evaluations
    }
    results = reporting.build_results(evaluations, train_logs, baseline=plan.baseline)
    return reporting.write_report(results, workdir, train_logs=train_logs, baseline=plan.baseline)


def train_and_evaluate_runs(
    plan: StudyPlan,
    config: ml_collections.ConfigDict,
    task_names: Mapping[str, str],
    timings: dict[str, float],
    *,
    progress: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
) -> None:
    """Trains (unless finished) and evaluates every run of the plan, in training order.

    config: the base training config each run's own is made from (plan_lib.run_config)."""
    from tqdm.auto import tqdm

    identity = vocabulary_identity(plan.vocabulary)
    bar = tqdm(plan.runs, desc="study", unit="model", disable=not progress, dynamic_ncols=True)
    for run_plan in bar:
        bar.set_postfix_str(run_plan.name)
        run_config = plan_lib.run_config(
            config, run_plan, task_names[run_plan.name], judge=plan.judge
        )
        # Built before training: a bad prompt or label file fails before any model exists.
        run_evaluator = evaluator.Evaluator(
            run_config,
            run_plan.directory,
            progress=progress,
            compiler_options=compiler_options,
            judge_loader=judge.load_judge,
        )
        trained = plan.run_plan(run_plan.trained_as)
        with stage(f"train {trained.name}", timings):
            trained_config = plan_lib.run_config(config, trained, task_names[trained.name])
            train_strategy(trained_config, trained.directory, identity)
        with stage(f"evaluate {run_plan.name}", timings):
            evaluate_strategy(run_config, run_plan.directory, run_evaluator, trained.directory)


def run_study(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    progress: bool = True,
    prepare_only: bool = False,
    compiler_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs every unfinished stage; returns results.json's content (keyed by strategy).

    The config is read here only: into the plan, and as the base of each run's training
    config. prepare_only: stop after scoring and the vocabulary, the inputs every strategy
    shares (so parallel per-strategy jobs do not race to create them). compiler_options: XLA
    options of the evaluation's compiled functions.
    """
    plan = plan_lib.plan_study(config, workdir)
    tasks.import_task_modules(config)  # before any task lookup: the user's task modules
    with run_locks(plan, prepare_only):
        return _run_stages(
            plan,
            config,
            progress=progress,
            prepare_only=prepare_only,
            compiler_options=compiler_options,
        )


def run_directories(plan: StudyPlan) -> list[str]:
    """The run directories a study job writes: each run's own, and the one it trains."""
    directories = set()
    for run_plan in plan.runs:
        directories |= {run_plan.directory, plan.run_plan(run_plan.trained_as).directory}
    return sorted(directories)


@contextlib.contextmanager
def run_locks(plan: StudyPlan, prepare_only: bool) -> Iterator[None]:
    """The lock of every run directory this job trains or evaluates (toxjax.workdir_lock),
    all taken before anything is written: strategy jobs may share one study workdir (each
    trains WORKDIR/<strategy>/), two jobs may not share a run. The shared inputs are locked
    by the stage that writes them (the scoring job, the vocabulary)."""
    with contextlib.ExitStack() as stack:
        for directory in [] if prepare_only else run_directories(plan):
            stack.enter_context(workdir_lock.hold(directory))
        yield


def _run_stages(
    plan: StudyPlan,
    config: ml_collections.ConfigDict,
    *,
    progress: bool,
    prepare_only: bool,
    compiler_options: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """run_study's stages, the run directories locked."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    workdir = plan.paths.workdir
    fileio.make_dirs(workdir)
    with stage("score corpus", timings):
        score_stage(plan.scoring, progress=progress)
    with stage("vocabulary", timings):
        vocabulary = vocab_stage(plan.vocabulary, plan.paths.scored_dir, progress=progress)
    if prepare_only:
        logging.info("study: shared inputs ready in %s (--prepare_only)", workdir)
        return {}
    with stage("register tasks", timings):
        task_names = tasks_stage(plan, vocabulary)
    for run_plan in plan.runs:
        if run_plan.trained_as == run_plan.name:
            logging.info("study: %s trains on task %s", run_plan.name, task_names[run_plan.name])
        else:
            logging.info("study: %s evaluates %s's checkpoints", run_plan.name, run_plan.trained_as)
    train_and_evaluate_runs(
        plan, config, task_names, timings, progress=progress, compiler_options=compiler_options
    )
    if not _is_chief():
        return {}
    with stage("report", timings):
        evaluations = finished_evaluations(
            plan.paths, plan.num_steps, [run_plan.run for run_plan in plan.runs]
        )
        paths = report_stage(plan, evaluations)
    logging.info(
        "study: finished in %.1fs (%s); results in %s",
        time.perf_counter() - started,
        ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items()),
        paths["markdown"],
    )
    return _read_json(paths["json"])
