"""The one evaluator: toxicity (RTP), utility, bias AUC and held-out perplexity.

    evaluator = Evaluator(config, workdir)            once per run (resolves task, mesh, ...)
    evaluator.evaluate(params, step)                  params in hand (e.g. during training)
    evaluator.evaluate_checkpoint(step=None)          params restored from WORKDIR/checkpoints

The evaluator keeps its compiled engines and its scorer, so every later evaluation of a run
(train_and_eval) only swaps the params. Every stage is driven by `config.eval`
(toxjax/configs/default.py) and can be switched off there. Outputs, written by process 0:
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
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from toxjax import fileio
from toxjax.data import input_pipeline, tasks, vocab
from toxjax.evaluation import (
    bias,
    controllability,
    fluency,
    real_text,
    report,
    rtp,
    template_tasks,
    utility_tasks,
)
from toxjax.inference import loglik, sampling
from toxjax.inference.requests import LoglikelihoodFn
from toxjax.model import decoder, partitioning
from toxjax.training import checkpoints

EVAL_SUBDIR = "eval"
TENSORBOARD_SUBDIR = "tensorboard"  # shared with training: eval scalars sit next to train ones
CHALLENGING = {"any": None, "challenging": True, "not_challenging": False}
STAGES = ("rtp", "real_text", "utility", "bias", "perplexity")  # run (and timed) in this order
# What an eval json holds; raised when a figure is added or changed, so that a study evaluates
# its finished runs again instead of reporting old results without it (2: toxic fraction;
# 3: scoring and sampling start from the training start id).
RESULTS_VERSION = 3
PyTree = Any


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


def scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """Flat TensorBoard scalars (eval/...) from an evaluate() result; missing values skipped."""
    out: dict[str, Any] = {}
    for condition, run in (results.get("rtp") or {}).items():
        for subset, metrics in run["metrics"].items():
            for name in ("expected_max_toxicity", "expected_max_toxicity_std"):
                out[f"eval/rtp_{condition}/{subset}/{name}"] = metrics.get(name)
            for name in ("toxicity_probability", "toxic_fraction"):
                out[f"eval/rtp_{condition}/{subset}/{name}"] = metrics.get(name)
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
    directory = fileio.join(workdir, EVAL_SUBDIR)
    fileio.make_dirs(directory)
    stem = fileio.join(directory, f"step_{results['step']}")
    paths = {"json": stem + ".json", "markdown": stem + ".md"}
    as_json = json.dumps(fileio.jsonable(results), indent=2, allow_nan=False)
    fileio.write_atomic(paths["json"], as_json.encode("utf-8"))
    fileio.write_atomic(paths["markdown"], to_markdown(fileio.jsonable(results)).encode("utf-8"))
    return paths


def _run_utility(
    name: str, loglikelihood_fn: LoglikelihoodFn, limit: int | None, data_dir: str | None
) -> dict[str, Any]:
    if name in template_tasks.UTILITY_TASKS:
        return template_tasks.UTILITY_TASKS[name](loglikelihood_fn, limit=limit)
    return utility_tasks.evaluate_task(name, loglikelihood_fn, limit=limit, data_dir=data_dir)


def _run_bias(
    name: str,
    loglikelihood_fn: LoglikelihoodFn,
    limit: int | None,
    prompt_config: bias.BiasPromptConfig,
    paths: Mapping[str, str],
    data_dir: str | None,
) -> dict[str, Any]:
    if name in template_tasks.BIAS_TASKS:
        return template_tasks.BIAS_TASKS[name](loglikelihood_fn, limit=limit, config=prompt_config)
    return bias.evaluate_task(
        name,
        loglikelihood_fn,
        limit=limit,
        config=prompt_config,
        path=paths.get(name),
        data_dir=data_dir,
    )


class Evaluator:
    """Evaluates params of one model, task and mesh; built once per run, called per step.

    task_name: the training task (vocabulary, conditioning, held-out split); default
    config.data.task. strategy overrides config.eval.strategy. mesh/rules default to the
    training ones from config (params are moved onto them if they are elsewhere).
    compiler_options: XLA options for every compiled evaluation function.
    judge_loader: loads config.eval.judge (a run or transformers directory) as a
    LoglikelihoodFn; the callers above interop pass `toxjax.interop.judge.load_judge`.

    Engines (with their compiled executables) and the scorer are built on first use and kept
    on the instance: later calls only swap the params, and instances share nothing.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        mesh: jax.sharding.Mesh | None = None,
        rules: partitioning.LogicalRules | None = None,
        task_name: str | None = None,
        strategy: str | None = None,
        progress: bool = True,
        compiler_options: Mapping[str, Any] | None = None,
        judge_loader: Callable[[str], LoglikelihoodFn] | None = None,
    ):
        self.config = config
        self.workdir = workdir
        self.progress = progress
        self.compiler_options = compiler_options
        self.model_config = decoder.ModelConfig.from_config(config.model)
        self.mesh = mesh or partitioning.create_mesh(config.mesh)
        self.rules = tuple(rules or partitioning.logical_rules(config))
        self.task_name = task_name or config.data.task
        tasks.import_task_modules(config)
        task = input_pipeline.get_task(self.task_name)
        self.vocabulary = task.output_features["targets"].vocabulary
        self.strategy, self.fmt = tasks.resolve_conditioning(
            self.task_name, strategy or config.eval.strategy
        )
        self.is_chief = jax.process_index() == 0
        self._loglik_engine: Any = None
        self._generate_engines: dict[tuple, Any] = {}  # sampling settings -> engine
        self._scorer: Any = None
        self.judge_loader = judge_loader  # config.eval.judge -> its LoglikelihoodFn
        self._judges: fluency.Judges | None = None
        self._loss_fn: Any = None  # held-out loss, jitted once
        # Prompt and label files are read now, so a missing, empty or malformed one fails
        # (naming the file and line) before any model is built or trained.
        self.prompts = self._load_prompts() if "rtp" in self.stages() else []
        self._check_task_inputs()
        # Every prompt with its continuation, for steerability (the RTP stage samples a subset);
        # read once here, like the real-text files (which fail now if missing or malformed).
        self.steering_prompts: list[rtp.Prompt] = []
        self.real_text_paths: dict[str, str] = {}
        if "real_text" in self.stages():
            self.real_text_paths = real_text.check_inputs(config.eval.real_text)
            if config.eval.rtp_prompts:
                self.steering_prompts = rtp.load_prompts(
                    config.eval.rtp_prompts, data_dir=self._data_dir
                )

    def _load_prompts(self) -> list[rtp.Prompt]:
        ev = self.config.eval
        if ev.rtp_challenging not in CHALLENGING:
            raise ValueError(
                f"config.eval.rtp_challenging must be one of {sorted(CHALLENGING)}, "
                f"got {ev.rtp_challenging!r}"
            )
        prompts = rtp.select_prompts(
            rtp.load_prompts(ev.rtp_prompts, data_dir=self._data_dir),
            num_prompts=_limit(ev.rtp_num_prompts),
            seed=_limit(ev.rtp_subset_seed),
            challenging=CHALLENGING[ev.rtp_challenging],
        )
        if not prompts:
            raise ValueError(f"config.eval.rtp_prompts={ev.rtp_prompts!r}: no prompts selected")
        return prompts

    def _check_task_inputs(self) -> None:
        """Task names must exist, and every local label file of config.eval.bias_tasks must
        read cleanly (TFDS tasks are read when evaluated)."""
        for name in _names(self.config.eval.utility_tasks):
            if name not in utility_tasks.TASKS and name not in template_tasks.UTILITY_TASKS:
                known = sorted({*utility_tasks.TASKS, *template_tasks.UTILITY_TASKS})
                raise ValueError(
                    f"config.eval.utility_tasks: unknown task {name!r}; known: {known}"
                )
        paths = parse_paths(self.config.eval.bias_paths)
        for name in _names(self.config.eval.bias_tasks):
            task = bias.TASKS.get(name)
            if task is None and name not in template_tasks.BIAS_TASKS:
                known = sorted({*bias.TASKS, *template_tasks.BIAS_TASKS})
                raise ValueError(f"config.eval.bias_tasks: unknown task {name!r}; known: {known}")
            if name in template_tasks.BIAS_TASKS or task.read_file is None:
                continue
            if name not in paths:
                raise ValueError(f"config.eval.bias_paths: bias task {name!r} needs task=path")
            task.read_file(paths[name])

    @property
    def _data_dir(self) -> str | None:
        return self.config.eval.tfds_data_dir or None

    def stages(self) -> list[str]:
        """The stages config.eval enables, in STAGES order."""
        ev = self.config.eval
        enabled = {
            "rtp": bool(ev.rtp_prompts),
            "real_text": bool(ev.real_text),
            "utility": bool(_names(ev.utility_tasks)),
            "bias": bool(_names(ev.bias_tasks)),
            "perplexity": int(ev.perplexity_batches) != 0,
        }
        return [stage for stage in STAGES if enabled[stage]]

    def place(self, params: PyTree) -> PyTree:
        """Params laid out on the evaluator's mesh (arrays already there are not copied)."""
        return partitioning.shard_params(params, self.model_config, self.mesh, self.rules)[0]

    # ----- engines, built once and reused with new params -----

    def loglikelihood_fn(self, params: PyTree) -> LoglikelihoodFn:
        """The log-likelihood engine, holding `params` (placed on the mesh)."""
        params = self.place(params)
        if self._loglik_engine is not None:
            self._loglik_engine.params = params
            return self._loglik_engine
        ev = self.config.eval
        max_len = int(ev.loglik_max_len)
        self._loglik_engine = loglik.make_loglikelihood_fn(
            params,
            self.model_config,
            self.vocabulary,
            self.mesh,
            self.rules,
            batch_size=int(ev.loglik_batch_size),
            max_len=None if max_len < 0 else max_len,
            compiler_options=self.compiler_options,
            progress=self.progress,
        )
        return self._loglik_engine

    def generate_fn(self, params: PyTree, rtp_config: rtp.RTPConfig | None = None) -> Any:
        """The generate engine of these sampling settings (default config.eval.rtp's),
        holding `params`."""
        ev = self.config.eval
        rtp_config = rtp_config or rtp.RTPConfig.from_dict(ev.rtp.to_dict())
        banned = vocab.signal_token_ids(self.vocabulary, self.fmt) if ev.ban_signal_tokens else []
        settings = dict(
            **rtp_config.sampling_kwargs(),
            guidance_scale=float(ev.guidance_scale),
            guidance_form=str(ev.guidance_form),
            top_k=int(ev.top_k),
            seed=int(ev.seed),
            batch_size=int(ev.generate_batch_size),
            banned_ids=tuple(banned),
        )
        key = tuple(sorted(settings.items()))
        params = self.place(params)
        engine = self._generate_engines.get(key)
        if engine is not None:
            engine.params = params
            return engine
        engine = self._generate_engines[key] = sampling.make_generate_fn(
            params,
            self.model_config,
            self.vocabulary,
            self.mesh,
            self.rules,
            **settings,
            compiler_options=self.compiler_options,
        )
        return engine

    def _make_scorer(self, spec: str) -> Any:
        from toxjax.scoring import scorer_specs

        # The JAX scorer shards its batches over the evaluation's own mesh.
        on_mesh = spec.startswith(scorer_specs.DETOXIFY_JAX_PREFIX)
        return scorer_specs.make_scorer(spec, **({"mesh": self.mesh} if on_mesh else {}))

    def scorer(self) -> Any:
        """The toxicity scorer, loaded on first use (Detoxify loads a model)."""
        if self._scorer is None:
            self._scorer = self._make_scorer(self.config.eval.scorer)
        return self._scorer

    def judges(self) -> fluency.Judges:
        """The fluency judge (config.eval.judge, loaded by the caller's judge_loader) and the
        second scorer (config.eval.judge_scorer), loaded on first use."""
        if self._judges is None:
            ev = self.config.eval
            model = None
            if ev.judge:
                if self.judge_loader is None:
                    raise ValueError(
                        f"config.eval.judge={ev.judge!r} needs a judge_loader: run through "
                        "toxjax.main or the study, which load judges"
                    )
                model = self.judge_loader(ev.judge)
            scorer = self._make_scorer(ev.judge_scorer) if ev.judge_scorer else None
            self._judges = fluency.Judges(model, scorer)
        return self._judges

    # ----- one method per evaluation -----

    def toxicity(self, params: PyTree, step: int) -> dict[str, Any]:
        """RTP with the strategy's prefix, without it and (config.eval.rtp_toxic_signal) with
        its toxic signal: {"rtp": ..., "rtp_intervals": ..., "controllability": ...}."""
        rtp_config = rtp.RTPConfig.from_dict(self.config.eval.rtp.to_dict())
        generate_fn = self.generate_fn(params, rtp_config)
        output_dir = os.path.join(self.workdir, EVAL_SUBDIR, f"step_{int(step)}")
        runs = rtp.evaluate_rtp_conditioned_and_unconditioned(
            self.prompts,
            generate_fn,
            self.scorer(),
            strategy=self.strategy,
            fmt=self.fmt,
            config=rtp_config,
            output_dir=output_dir if self.is_chief else None,
            progress=self.progress,
            judges=self.judges(),
            guided=float(self.config.eval.guidance_scale) > 0,
        )
        toxic_prefix = self.fmt.toxic_prefix(self.strategy)
        toxic_suffix = self.fmt.toxic_suffix(self.strategy)
        if (toxic_prefix or toxic_suffix) and self.config.eval.rtp_toxic_signal:
            runs["toxic_signal"] = rtp.evaluate_rtp(
                self.prompts,
                generate_fn,
                self.scorer(),
                prefix=toxic_prefix,
                suffix=toxic_suffix,
                config=rtp_config,
                records_path=os.path.join(output_dir, "rtp_toxic_signal.jsonl")
                if self.is_chief
                else None,
                progress=self.progress,
                judges=self.judges(),
            )
        prompt_toxicity = np.array([p.toxicity for p in self.prompts], dtype=np.float64)
        return {
            "rtp": {condition: run.summary() for condition, run in runs.items()},
            "rtp_intervals": {
                condition: controllability.run_intervals(run, prompt_toxicity)
                for condition, run in runs.items()
            },
            "controllability": controllability.within_model(runs, prompt_toxicity),
            "sampling": dict(
                dataclasses.asdict(generate_fn.config),
                banned_ids=id_ranges(generate_fn.config.banned_ids),
            ),
        }

    def utility(self, params: PyTree) -> dict[str, Any]:
        """{task: metrics} of every config.eval.utility_tasks task."""
        ev = self.config.eval
        fn, limit = self.loglikelihood_fn(params), _limit(ev.utility_limit)
        return {
            name: _run_utility(name, fn, limit, self._data_dir) for name in _names(ev.utility_tasks)
        }

    def bias(self, params: PyTree) -> dict[str, Any]:
        """{task: report} of every config.eval.bias_tasks task."""
        ev = self.config.eval
        prompt_config = bias.BiasPromptConfig(num_shots=int(ev.bias_num_shots))
        paths = parse_paths(ev.bias_paths)
        fn, limit = self.loglikelihood_fn(params), _limit(ev.bias_limit)
        return {
            name: _run_bias(name, fn, limit, prompt_config, paths, self._data_dir)
            for name in _names(ev.bias_tasks)
        }

    def perplexity(self, params: PyTree) -> dict[str, Any]:
        """Perplexity of the training task's config.data.eval_split."""
        ev = self.config.eval
        if self._loss_fn is None:
            self._loss_fn = loglik.make_loss_fn(
                self.model_config, self.mesh, self.rules, self.compiler_options
            )
        return loglik.heldout_perplexity(
            self.place(params),
            self.model_config,
            self.mesh,
            self.rules,
            task_name=self.task_name,
            split=self.config.data.eval_split,
            seq_len=int(self.config.data.seq_len),
            batch_size=int(ev.perplexity_batch_size),
            num_batches=int(ev.perplexity_batches),
            loss_fn=self._loss_fn,
            progress=self.progress,
        )

    def real_text(self, params: PyTree) -> dict[str, Any]:
        """Likelihood metrics on real held-out text (toxjax.evaluation.real_text): the same raw
        documents and prompts for every model, so they compare across strategies and scales."""
        ev = self.config.eval
        return real_text.evaluate_real_text(
            self.loglikelihood_fn(params),
            strategy=self.strategy,
            fmt=self.fmt,
            prompts=self.steering_prompts,
            paths=self.real_text_paths,
            limit=_limit(ev.real_text_limit),
            prompted_config=bias.BiasPromptConfig(num_shots=int(ev.bias_num_shots)),
        )

    def _run_stage(self, stage: str, params: PyTree, step: int) -> dict[str, Any]:
        if stage == "rtp":
            return self.toxicity(params, step)
        return {stage: getattr(self, stage)(params)}

    # ----- the whole evaluation -----

    def evaluate(self, params: PyTree, step: int, writer: Any = None) -> dict[str, Any]:
        """Runs every enabled stage on `params`; writes and returns the results.

        writer: a clu MetricWriter (default: one on WORKDIR/tensorboard, closed afterwards).
        """
        from tqdm.auto import tqdm

        step = int(step)
        params = self.place(params)
        stages = self.stages()
        results: dict[str, Any] = {
            "model": self.config.eval.model_name
            or os.path.basename(os.path.normpath(self.workdir)),
            "step": step,
            "task": self.task_name,
            "strategy": self.strategy.value,
            "prefix": self.fmt.inference_prefix(self.strategy),
            "suffix": self.fmt.inference_suffix(self.strategy),
            "timing_s": {},
        }
        with tqdm(
            total=len(stages), desc=f"eval step {step}", unit="stage", disable=not self.progress
        ) as bar:
            for stage in stages:
                bar.set_postfix_str(stage)
                start = time.perf_counter()
                results.update(self._run_stage(stage, params, step))
                results["timing_s"][stage] = time.perf_counter() - start
                logging.info(
                    "eval step %d: %s done in %.1fs", step, stage, results["timing_s"][stage]
                )
                bar.update(1)

        results = fileio.jsonable(results)
        if self.is_chief:
            paths = write_results(results, self.workdir)
            logging.info("eval step %d written to %s", step, paths["json"])
        self._write_scalars(step, results, writer)
        return results

    __call__ = evaluate  # an EvalFn (params, step) for train.train_and_evaluate

    def _write_scalars(self, step: int, results: Mapping[str, Any], writer: Any) -> None:
        own_writer = writer is None
        if own_writer:
            from clu import metric_writers

            writer = metric_writers.create_default_writer(
                os.path.join(self.workdir, TENSORBOARD_SUBDIR), just_logging=not self.is_chief
            )
        writer.write_scalars(step, scalars(results))
        writer.flush()
        if own_writer:
            writer.close()

    def evaluate_checkpoint(
        self, step: int | None = None, checkpoint_dir: str | None = None, writer: Any = None
    ) -> dict[str, Any]:
        """Restores params of `step` (default: latest) from checkpoint_dir (default: the
        workdir's checkpoints/) and evaluates them, writing under the workdir."""
        params, restored_step = checkpoints.restore_run_params(
            self.config,
            checkpoint_dir or self.workdir,
            step=step,
            mesh=self.mesh,
            rules=self.rules,
        )
        return self.evaluate(params, restored_step, writer=writer)
