"""The one evaluation loop: toxicity (RTP), utility, bias AUC and held-out perplexity.

    evaluate(params, config, step=..., workdir=...)      params in hand (e.g. during training)
    evaluate_checkpoint(config, workdir, step=None)      params restored from WORKDIR/checkpoints

Every stage is driven by `config.eval` (configs/default.py) and can be switched off there.
Outputs, written by process 0:
    WORKDIR/eval/step_<N>.json    all metrics (strict JSON; NaN -> null), `report.py` layout
    WORKDIR/eval/step_<N>.md      markdown summary (report.to_markdown plus perplexity, timings)
    WORKDIR/eval/step_<N>/rtp_{conditioned,unconditioned}.jsonl   per-prompt continuations
    WORKDIR/tensorboard           scalars under eval/... (clu metric_writers)

RTP prompts get the inference prefix of the strategy the model was trained with
(`tasks.conditioning_for(config.data.task)`, or config.eval.strategy) and, separately, none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections

from toxjax.data import input_pipeline
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.demo import eval_tasks
from toxjax.evaluation import bias, loglik, report, rtp, utility_tasks
from toxjax.evaluation.requests import LoglikelihoodFn, jsonable
from toxjax.model import decoder, partitioning, sampling
from toxjax.training import checkpoints

logger = logging.getLogger(__name__)

EVAL_SUBDIR = "eval"
TENSORBOARD_SUBDIR = "tensorboard"  # shared with training: eval scalars sit next to train ones
CHALLENGING = {"any": None, "challenging": True, "not_challenging": False}
PyTree = Any


# Engines (and their compiled executables) reused by later evaluate() calls on the same model
# and settings, e.g. every evaluation of a train_and_eval run: only the params change.
_ENGINES: dict[tuple, Any] = {}
_MAX_ENGINES = 8
_SCORERS: dict[str, Any] = {}


def _engine(key: tuple, build: Callable[[], Any], params: PyTree) -> Any:
    engine = _ENGINES.get(key)
    if engine is None:
        while len(_ENGINES) >= _MAX_ENGINES:
            _ENGINES.pop(next(iter(_ENGINES)))
        engine = _ENGINES[key] = build()
    else:
        engine.params = params  # already laid out on the engine's mesh by evaluate()
    return engine


def _names(value: str | Sequence[str]) -> list[str]:
    """A tuple config field (a comma-separated string is accepted too)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


def _limit(value: int) -> int | None:
    return None if int(value) < 0 else int(value)


def id_ranges(ids: Sequence[int]) -> str:
    """Compact text of a set of token ids: [0, 259, 260, 261] -> "0,259-261"."""
    parts: list[tuple[int, int]] = []
    for value in sorted(set(ids)):
        if parts and parts[-1][1] == value - 1:
            parts[-1] = (parts[-1][0], value)
        else:
            parts.append((value, value))
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def parse_paths(spec: str) -> dict[str, str]:
    """ "task=path,task=path" -> {task: path} (config.eval.bias_paths)."""
    paths = {}
    for item in _names(spec):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"config.eval.bias_paths: {item!r} is not task=path")
        paths[name.strip()] = path.strip()
    return paths


def signal_token_ids(vocabulary: Any, fmt: ConditioningFormat) -> list[int]:
    """Ids of vocabulary pieces that spell a whole conditioning signal (SentencePiece only).

    `toxjax.data.vocab` trains SentencePiece models with every signal as one user-defined piece;
    banning those ids keeps a model from writing a signal into its own continuation (the
    separator piece, e.g. a newline, stays allowed). Byte vocabularies have no such pieces.
    """
    from toxjax.data import vocab

    tokenizer = getattr(vocabulary, "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "piece_to_id"):
        return []
    separator = fmt.separator.replace(" ", "\u2581")  # as SentencePiece writes spaces
    pieces = [p for p in vocab.signal_pieces(fmt) if p != separator]
    return sorted({tokenizer.piece_to_id(p) for p in pieces} - {tokenizer.unk_id()})


def resolve_conditioning(task_name: str, strategy: str = "") -> tuple[Strategy, ConditioningFormat]:
    """The strategy and format to evaluate with: the training task's, unless overridden."""
    from toxjax.data import tasks

    try:
        trained_strategy, fmt = tasks.conditioning_for(task_name)
    except ValueError:
        if not strategy:
            logger.warning(
                "task %r carries no conditioning (not a register_toxicity_tasks task): "
                "evaluating as BASE; set config.eval.strategy to choose",
                task_name,
            )
        trained_strategy, fmt = Strategy.BASE, ConditioningFormat()
    return (Strategy.parse(strategy) if strategy else trained_strategy), fmt


def scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """Flat TensorBoard scalars (eval/...) from an evaluate() result; missing values skipped."""
    out: dict[str, Any] = {}
    for condition, run in (results.get("rtp") or {}).items():
        for subset, metrics in run["metrics"].items():
            for name in ("expected_max_toxicity", "expected_max_toxicity_std"):
                out[f"eval/rtp_{condition}/{subset}/{name}"] = metrics.get(name)
            out[f"eval/rtp_{condition}/{subset}/toxicity_probability"] = metrics.get(
                "toxicity_probability"
            )
    for task, metrics in (results.get("utility") or {}).items():
        for name in ("acc", "acc_norm", "perplexity"):
            out[f"eval/utility/{task}/{name}"] = metrics.get(name)
    for task, metrics in (results.get("bias") or {}).items():
        for name in ("auc", "mean_subgroup_auc"):
            out[f"eval/bias/{task}/{name}"] = metrics.get(name)
    heldout = results.get("perplexity") or {}
    out["eval/heldout/perplexity"] = heldout.get("perplexity")
    out["eval/heldout/loss"] = heldout.get("loss")
    return {name: float(value) for name, value in out.items() if value is not None}


def to_markdown(results: Mapping[str, Any]) -> str:
    """The step's summary: a header, held-out perplexity, timings, then report.py's tables."""
    scorers = sorted({run["scorer"] for run in (results.get("rtp") or {}).values()})
    lines = [
        f"# Evaluation of {results['model']} at step {results['step']}",
        "",
        f"- task: `{results['task']}`, strategy: `{results['strategy']}`, "
        f"RTP prefix: `{json.dumps(results['prefix'])}`, scorer: {', '.join(scorers) or 'n/a'}",
    ]
    heldout = results.get("perplexity")
    if heldout:
        lines.append(
            f"- held-out perplexity ({heldout['task']}:{heldout['split']}, "
            f"{heldout['num_tokens']} tokens): {heldout['perplexity']:.3f}"
        )
    timing = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in results["timing_s"].items())
    lines += [f"- wall time: {timing}", ""]
    table = report.to_markdown(report.build_report([results], baseline=results["model"]))
    return "\n".join(lines) + "\n" + table.split("\n", 1)[1]


def write_results(results: Mapping[str, Any], workdir: str) -> dict[str, str]:
    """step_<N>.json and step_<N>.md under WORKDIR/eval; returns their paths."""
    directory = os.path.join(workdir, EVAL_SUBDIR)
    os.makedirs(directory, exist_ok=True)
    stem = os.path.join(directory, f"step_{results['step']}")
    paths = {"json": stem + ".json", "markdown": stem + ".md"}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(jsonable(results), f, indent=2, allow_nan=False)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(to_markdown(jsonable(results)))
    return paths


def _run_utility(
    name: str, loglikelihood_fn: LoglikelihoodFn, limit: int | None, data_dir: str | None
) -> dict[str, Any]:
    if name in eval_tasks.UTILITY_TASKS:
        return eval_tasks.UTILITY_TASKS[name](loglikelihood_fn, limit=limit)
    return utility_tasks.evaluate_task(name, loglikelihood_fn, limit=limit, data_dir=data_dir)


def _run_bias(
    name: str,
    loglikelihood_fn: LoglikelihoodFn,
    limit: int | None,
    prompt_config: bias.BiasPromptConfig,
    paths: Mapping[str, str],
    data_dir: str | None,
) -> dict[str, Any]:
    if name in eval_tasks.BIAS_TASKS:
        return eval_tasks.BIAS_TASKS[name](loglikelihood_fn, limit=limit, config=prompt_config)
    return bias.evaluate_task(
        name,
        loglikelihood_fn,
        limit=limit,
        config=prompt_config,
        path=paths.get(name),
        data_dir=data_dir,
    )


def evaluate(
    params: PyTree,
    config: ml_collections.ConfigDict,
    *,
    step: int,
    workdir: str,
    task_name: str | None = None,
    strategy: str | None = None,
    writer: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    rules: partitioning.LogicalRules | None = None,
    progress: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Runs every enabled stage of config.eval on `params`; writes and returns the results.

    task_name: the training task (vocabulary, conditioning, held-out split); default
    config.data.task. strategy overrides config.eval.strategy. writer: a clu MetricWriter
    (default: one on WORKDIR/tensorboard, closed afterwards). mesh/rules default to the
    training ones from config (params are moved onto them if they are elsewhere).
    compiler_options: XLA options for every compiled evaluation function.
    """
    from tqdm.auto import tqdm

    ev = config.eval
    step = int(step)
    model_cfg = decoder.ModelConfig.from_config(config.model)
    mesh = mesh or partitioning.create_mesh(config.mesh)
    rules = tuple(rules or partitioning.logical_rules(config))
    task_name = task_name or config.data.task
    vocabulary = input_pipeline.get_task(task_name).output_features["targets"].vocabulary
    chosen, fmt = resolve_conditioning(task_name, strategy or ev.strategy)
    params, _ = partitioning.shard_params(params, model_cfg, mesh, rules)
    is_chief = jax.process_index() == 0
    data_dir = ev.tfds_data_dir or None

    stages: list[str] = []
    if ev.rtp_prompts:
        stages.append("rtp")
    utility_names, bias_names = _names(ev.utility_tasks), _names(ev.bias_tasks)
    if utility_names:
        stages.append("utility")
    if bias_names:
        stages.append("bias")
    if int(ev.perplexity_batches) != 0:
        stages.append("perplexity")

    results: dict[str, Any] = {
        "model": ev.model_name or os.path.basename(os.path.normpath(workdir)),
        "step": step,
        "task": task_name,
        "strategy": chosen.value,
        "prefix": fmt.inference_prefix(chosen),
        "timing_s": {},
    }
    options_key = tuple(sorted((compiler_options or {}).items()))
    engine_key = (model_cfg, mesh, rules, id(vocabulary), options_key)

    def loglikelihood_fn() -> LoglikelihoodFn:
        max_len = int(ev.loglik_max_len)
        batch_size = int(ev.loglik_batch_size)
        return _engine(
            ("loglik", *engine_key, batch_size, max_len),
            lambda: loglik.make_loglikelihood_fn(
                params,
                model_cfg,
                vocabulary,
                mesh,
                rules,
                batch_size=batch_size,
                max_len=None if max_len < 0 else max_len,
                compiler_options=compiler_options,
                progress=progress,
            ),
            params,
        )

    def run_rtp() -> None:
        rtp_config = rtp.RTPConfig.from_dict(ev.rtp.to_dict())
        if ev.rtp_challenging not in CHALLENGING:
            raise ValueError(
                f"config.eval.rtp_challenging must be one of {sorted(CHALLENGING)}, "
                f"got {ev.rtp_challenging!r}"
            )
        prompts = rtp.select_prompts(
            rtp.load_prompts(ev.rtp_prompts, data_dir=data_dir),
            num_prompts=_limit(ev.rtp_num_prompts),
            seed=_limit(ev.rtp_subset_seed),
            challenging=CHALLENGING[ev.rtp_challenging],
        )
        banned = []
        if ev.ban_signal_tokens:
            banned = signal_token_ids(vocabulary, fmt)
        settings = dict(
            **rtp_config.sampling_kwargs(),
            top_k=int(ev.top_k),
            seed=int(ev.seed),
            batch_size=int(ev.generate_batch_size),
            banned_ids=tuple(banned),
        )
        generate_fn = _engine(
            ("generate", *engine_key, tuple(sorted(settings.items()))),
            lambda: sampling.make_generate_fn(
                params,
                model_cfg,
                vocabulary,
                mesh,
                rules,
                **settings,
                compiler_options=compiler_options,
            ),
            params,
        )
        if ev.scorer not in _SCORERS:  # loaded once per process (Detoxify loads a model)
            from toxjax.scoring import scorers

            _SCORERS[ev.scorer] = scorers.make_scorer(ev.scorer)
        runs = rtp.evaluate_rtp_conditioned_and_unconditioned(
            prompts,
            generate_fn,
            _SCORERS[ev.scorer],
            strategy=chosen,
            fmt=fmt,
            config=rtp_config,
            output_dir=os.path.join(workdir, EVAL_SUBDIR, f"step_{step}") if is_chief else None,
            progress=progress,
        )
        results["rtp"] = {condition: run.summary() for condition, run in runs.items()}
        results["sampling"] = dict(
            dataclasses.asdict(generate_fn.config),
            banned_ids=id_ranges(generate_fn.config.banned_ids),
        )

    def run_utility() -> None:
        results["utility"] = {
            name: _run_utility(name, loglikelihood_fn(), _limit(ev.utility_limit), data_dir)
            for name in utility_names
        }

    def run_bias() -> None:
        prompt_config = bias.BiasPromptConfig(num_shots=int(ev.bias_num_shots))
        paths = parse_paths(ev.bias_paths)
        results["bias"] = {
            name: _run_bias(
                name, loglikelihood_fn(), _limit(ev.bias_limit), prompt_config, paths, data_dir
            )
            for name in bias_names
        }

    def run_perplexity() -> None:
        results["perplexity"] = loglik.heldout_perplexity(
            params,
            model_cfg,
            mesh,
            rules,
            task_name=task_name,
            split=config.data.eval_split,
            seq_len=int(config.data.seq_len),
            batch_size=int(ev.perplexity_batch_size),
            num_batches=int(ev.perplexity_batches),
            compiler_options=compiler_options,
            progress=progress,
        )

    runners: dict[str, Callable[[], None]] = {
        "rtp": run_rtp,
        "utility": run_utility,
        "bias": run_bias,
        "perplexity": run_perplexity,
    }
    with tqdm(
        total=len(stages), desc=f"eval step {step}", unit="stage", disable=not progress
    ) as bar:
        for stage in stages:
            bar.set_postfix_str(stage)
            start = time.perf_counter()
            runners[stage]()
            results["timing_s"][stage] = time.perf_counter() - start
            logger.info("eval step %d: %s done in %.1fs", step, stage, results["timing_s"][stage])
            bar.update(1)

    results = jsonable(results)
    if is_chief:
        paths = write_results(results, workdir)
        logger.info("eval step %d written to %s", step, paths["json"])
    own_writer = writer is None
    if own_writer:
        from clu import metric_writers

        writer = metric_writers.create_default_writer(
            os.path.join(workdir, TENSORBOARD_SUBDIR), just_logging=not is_chief
        )
    writer.write_scalars(step, scalars(results))
    writer.flush()
    if own_writer:
        writer.close()
    return results


# ----- from checkpoints -----


def restore_params(
    config: ml_collections.ConfigDict,
    checkpoint_dir: str,
    *,
    step: int | None = None,
    mesh: jax.sharding.Mesh,
    rules: partitioning.LogicalRules,
) -> tuple[PyTree, int]:
    """Params only (no optimizer state) of `step` (default: the latest) of a training run,
    checked against config.model and read straight into their shardings on `mesh`."""
    model_cfg = decoder.ModelConfig.from_config(config.model)
    return checkpoints.restore_params(
        checkpoint_dir,
        partitioning.abstract_params(model_cfg, mesh, rules),
        dataclasses.asdict(model_cfg),
        step=step,
        what=f"evaluation of {checkpoint_dir!r}",
    )


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    step: int | None = None,
    checkpoint_dir: str | None = None,
    writer: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    compiler_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restores params of `step` (default: latest) from checkpoint_dir (default: workdir's
    checkpoints/) and runs `evaluate`, writing under workdir. mesh defaults to config.mesh."""
    mesh = mesh or partitioning.create_mesh(config.mesh)
    rules = partitioning.logical_rules(config)
    params, restored_step = restore_params(
        config, checkpoint_dir or workdir, step=step, mesh=mesh, rules=rules
    )
    return evaluate(
        params,
        config,
        step=restored_step,
        workdir=workdir,
        writer=writer,
        mesh=mesh,
        rules=rules,
        progress=progress,
        compiler_options=compiler_options,
    )
