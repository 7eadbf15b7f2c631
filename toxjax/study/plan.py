"""The study's settings, read from the config once: which runs, where, on what data.

`plan_study(config, workdir)` reads config.study (and the few training fields the study itself
uses) once and validates every value, naming its config field, so a typo fails before anything
is scored or trained. The stages then take the frozen StudyPlan (or the part they need), never
the ConfigDict. The one ConfigDict a stage hands to the lower layers (training, evaluation) is a
run's training config, built by `run_config` from the base config and that run's RunPlan.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import ml_collections

from toxjax import fileio
from toxjax.data import vocab
from toxjax.data.conditioning import ConditioningFormat, Strategy
from toxjax.evaluation import evaluator
from toxjax.inference import guidance
from toxjax.scoring import job, segments
from toxjax.study import reporting, runs

SCORED_SUBDIR = "scored"
VOCAB_SUBDIR = "vocab"
VOCABULARIES = ("byte", "spm")  # or a path to a SentencePiece .model file
# Strategies whose runs carry a signal, so a signal-free cooldown (MeCo) means something.
COOLDOWN_STRATEGIES = (Strategy.MEDA, Strategy.INST, Strategy.SEGMENT)


# ----------------------------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class StudyPaths:
    """Where the study reads and writes (a run's directory is WORKDIR/<run name>)."""

    workdir: str
    scored_dir: str
    vocab_dir: str
    results_json: str
    results_md: str

    def run_dir(self, run: runs.Run | Strategy | str) -> str:
        """WORKDIR/<run name> (a plain strategy's seed-0 run is WORKDIR/<strategy>)."""
        name = run.name if isinstance(run, runs.Run) else Strategy.parse(run).value
        return fileio.join(self.workdir, name)

    def eval_json(self, run: runs.Run | Strategy | str, step: int) -> str:
        """The eval results of a run at `step`, where the evaluator writes them."""
        return fileio.join(self.run_dir(run), evaluator.EVAL_SUBDIR, f"step_{step}.json")


@dataclasses.dataclass(frozen=True)
class ScoringPlan:
    """What the scoring job reads, how, and where it writes."""

    corpus: str
    scorer: str
    output_dir: str
    options: job.ScoreOptions


@dataclasses.dataclass(frozen=True)
class VocabularyPlan:
    """The study's vocabulary: bytes, a SentencePiece model trained here, or a given file."""

    kind: str  # "byte" | "spm" | "file"
    path: str | None  # the .model file (None for bytes)
    size: int  # pieces of a trained model
    max_docs: int | None  # documents read to train it (None: all)
    formats: tuple[ConditioningFormat, ...]  # the study's and each variant's: signal pieces
    segment: bool  # whether the SEGMENT control tokens are pieces too


@dataclasses.dataclass(frozen=True)
class Variant:
    """One ablation variant of config.study.variants."""

    strategy: Strategy
    spec: str  # "field=value;...", as written
    overrides: tuple[tuple[str, Any], ...]  # parsed, lists made tuples


@dataclasses.dataclass(frozen=True)
class FamilyPlan:
    """One SeqIO task family the study registers (its own, or a variant's)."""

    name: str
    overrides: tuple[tuple[str, Any], ...]  # the variant's fields (none for the study's own)
    untagged_rate: float  # > 0: conditioned tasks are mixtures with this share of BASE
    strategies: tuple[Strategy, ...]  # registered (BASE too when a mixture or cooldown needs it)
    members: tuple[tuple[str, Strategy], ...]  # (run name, strategy) of the runs training on it


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run: where it lives and what its training config changes."""

    run: runs.Run
    directory: str
    family: str  # the SeqIO family it trains on
    train_seed: int  # config.train.seed + the run's seed index
    data_seed: int  # config.data.seed + the run's seed index
    cooldown_fraction: float  # signal-free cooldown share (0: none)
    cooldown_task: str  # the task the cooldown draws from ("" without one)
    trained_as: str  # the run whose checkpoints it evaluates (its own name when it trains)

    @property
    def name(self) -> str:
        return self.run.name


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """Everything the stages read, resolved and validated once."""

    name: str  # SeqIO family name of the study's tasks
    strategies: tuple[Strategy, ...]
    num_seeds: int
    variants: tuple[Variant, ...]
    runs: tuple[RunPlan, ...]  # the study's runs, in training order
    task_runs: tuple[RunPlan, ...]  # every run with a task: those and the runs they evaluate
    families: tuple[FamilyPlan, ...]
    conditioning: ConditioningFormat
    threshold_quantile: float  # >= 0: the threshold is this quantile of the scored corpus
    validation_fraction: float
    baseline: str  # the report row every other run is compared with
    judge: str  # every run's config.eval.judge ("" = none)
    num_steps: int  # training steps of every run (its eval results are at this step)
    scoring: ScoringPlan
    vocabulary: VocabularyPlan
    paths: StudyPaths

    def run_plan(self, name: str) -> RunPlan:
        """The RunPlan of a run (of the study, or one a study run evaluates) by name."""
        for run_plan in self.task_runs:
            if run_plan.name == name:
                return run_plan
        raise KeyError(f"no run named {name!r} in this study")


# ----------------------------------------------------------------------------------------------
# Reading and validating the config.


def _field(name: str, read: Callable[[], Any]) -> Any:
    """read(), a ValueError or TypeError prefixed with the config field it comes from."""
    try:
        return read()
    except (ValueError, TypeError) as error:
        message = str(error)
        raise ValueError(message if name in message else f"{name}: {message}") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _freeze(value: Any) -> Any:
    """Lists (JSON arrays of a variant value) as tuples, so a plan holds no mutable value."""
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def parse_strategies(value: Any) -> tuple[Strategy, ...]:
    """config.study.strategies as Strategy values (a comma-separated string works too)."""
    # --config.study.strategies=base,inst arrives as ("base,inst",): split every element.
    parts = [value] if isinstance(value, str) else list(value)
    names = [name.strip() for part in parts for name in str(part).split(",") if name.strip()]
    strategies = tuple(
        _field("config.study.strategies", lambda n=name: Strategy.parse(n)) for name in names
    )
    _check(bool(strategies), "config.study.strategies is empty: name at least one strategy")
    _check(
        len(set(strategies)) == len(strategies),
        f"config.study.strategies lists a strategy twice: {names}",
    )
    return strategies


def conditioning_format(study: ml_collections.ConfigDict) -> ConditioningFormat:
    """config.study.conditioning as a ConditioningFormat (typos and bad values fail here)."""
    conditioning = study.get("conditioning") or {}
    if hasattr(conditioning, "to_dict"):
        conditioning = conditioning.to_dict()
    return _field("config.study.conditioning", lambda: ConditioningFormat.from_dict(conditioning))


def _fraction(name: str, value: Any, *, low_open: bool = False) -> float:
    """A share in [0, 1) ((0, 1) with low_open), named `name` when it is not one."""
    number = _field(name, lambda: float(value))
    low_ok = number > 0 if low_open else number >= 0
    _check(low_ok and number < 1, f"{name} must be in {'(' if low_open else '['}0, 1), got {value}")
    return number


def _quantile(name: str, value: Any) -> float:
    """A threshold quantile: < 0 for none, else in (0, 1)."""
    number = _field(name, lambda: float(value))
    _check(
        number < 0 or 0 < number < 1,
        f"{name} must be in (0, 1), or < 0 for none, got {value}",
    )
    return number


def parse_variants(
    specs: Any, base: ConditioningFormat, untagged: float, cooldown: float
) -> tuple[Variant, ...]:
    """config.study.variants, each checked: fields, values, and the format they make."""
    specs = [specs] if isinstance(specs, str) else [str(spec) for spec in specs or ()]
    variants = []
    for spec in specs:
        strategy, text = _field("config.study.variants", lambda s=spec: runs.parse_variant(s))
        overrides = runs.parse_overrides(text)
        where = f"config.study.variants: {spec!r}"
        _field(where, lambda o=overrides: runs.format_fields(base, o))
        _fraction(f"{where}: untagged_rate", overrides.get("untagged_rate", untagged))
        _fraction(f"{where}: cooldown_fraction", overrides.get("cooldown_fraction", cooldown))
        _quantile(f"{where}: threshold_quantile", overrides.get("threshold_quantile", -1.0))
        _check_guidance(where, strategy, overrides, base)
        frozen = tuple((key, _freeze(value)) for key, value in overrides.items())
        variants.append(Variant(strategy, text, frozen))
    return tuple(variants)


def _check_guidance(
    where: str, strategy: Strategy, overrides: dict[str, Any], base: ConditioningFormat
) -> None:
    """A guided variant needs a scale >= 0, a known form and a toxic signal to steer from."""
    if "guidance_scale" not in overrides and "guidance_form" not in overrides:
        return
    scale = _field(f"{where}: guidance_scale", lambda: float(overrides.get("guidance_scale", 0)))
    _check(scale >= 0, f"{where}: guidance_scale must be >= 0, got {scale}")
    form = overrides.get("guidance_form", "cfg")
    _check(form in guidance.FORMS, f"{where}: guidance_form must be one of {guidance.FORMS}")
    fmt = runs.format_fields(base, overrides)
    _check(
        bool(fmt.toxic_prefix(strategy) or fmt.toxic_suffix(strategy)),
        f"{where}: {strategy.value} has no toxic signal to guide away from",
    )


def _judge(study: ml_collections.ConfigDict, strategies: tuple[Strategy, ...], paths) -> str:
    """config.study.judge as the directory every run's config.eval.judge names."""
    judge = str(study.get("judge", ""))
    if judge != "base":
        return judge
    _check(
        bool(strategies) and strategies[0] is Strategy.BASE,
        "config.study.judge='base' judges every run with the study's BASE model, which must "
        f"train first: put base first in config.study.strategies (got {strategies}), or set "
        "config.study.judge to a directory or ''",
    )
    return paths.run_dir(Strategy.BASE)


# ----------------------------------------------------------------------------------------------
# Building the plan.


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _vocabulary(
    study: ml_collections.ConfigDict,
    vocab_dir: str,
    formats: tuple[ConditioningFormat, ...],
    segment: bool,
) -> VocabularyPlan:
    """The vocabulary plan; a trained SentencePiece model is named by its settings and signal
    pieces, so a changed conditioning format gets a new one."""
    spec = str(study.vocabulary)
    size, max_docs, path = 0, -1, None
    if spec == "spm":
        size = _field("config.study.vocab_size", lambda: int(study.vocab_size))
        _check(size >= 1, f"config.study.vocab_size must be >= 1, got {size}")
        max_docs = _field("config.study.vocab_max_docs", lambda: int(study.vocab_max_docs))
        _check(max_docs != 0, "config.study.vocab_max_docs must be >= 1, or < 0 for all")
        settings = {
            "vocab_size": size,
            "max_docs": max_docs,
            "pieces": [p for f in formats for p in vocab.signal_pieces(f, segment=segment)],
            # What the scored corpus is (not where it is, so a moved workdir keeps its model).
            "corpus": [study.corpus, study.text_field, study.scorer],
        }
        path = fileio.join(vocab_dir, f"spm{size}-{_fingerprint(settings)[:8]}") + ".model"
    elif spec.endswith(".model"):
        path = spec
    elif spec != "byte":
        raise ValueError(
            f"config.study.vocabulary={spec!r}: expected one of {VOCABULARIES} or a path to a "
            "SentencePiece .model file"
        )
    kind = spec if spec in VOCABULARIES else "file"
    max_docs_or_all = None if max_docs < 0 else max_docs
    return VocabularyPlan(kind, path, size, max_docs_or_all, formats, segment)


def _scoring(
    study: ml_collections.ConfigDict, fmt: ConditioningFormat, scored_dir: str, segment: str
) -> ScoringPlan:
    """The scoring job's input and options (`segment`: "" unless a run uses SEGMENT)."""
    for name in ("corpus", "scorer"):
        _check(bool(study[name]), f"config.study.{name} is empty")
    records = _field("config.study.records_per_shard", lambda: int(study.records_per_shard))
    _check(records >= 1, f"config.study.records_per_shard must be >= 1, got {records}")
    _check(
        study.on_bad_record in job.ON_BAD_RECORD,
        f"config.study.on_bad_record must be one of {job.ON_BAD_RECORD}, "
        f"got {study.on_bad_record!r}",
    )
    if segment:
        _field("config.study.segment", lambda: segments.Segmenter.parse(segment))
    options = job.ScoreOptions(
        text_field=study.text_field,
        records_per_shard=records,
        on_bad_record=study.on_bad_record,
        threshold=fmt.threshold,
        attribute=fmt.attribute,
        tfds_data_dir=study.tfds_data_dir or None,
        segment=segment,
    )
    return ScoringPlan(study.corpus, study.scorer, scored_dir, options)


def _paths(study: ml_collections.ConfigDict, workdir: str, segment: str) -> StudyPaths:
    """WORKDIR/scored, or WORKDIR/scored-<segmentation> for a study with SEGMENT (another
    scoring run: the same documents and scores plus segment scores); config.study.scored_dir
    when given."""
    name = f"{SCORED_SUBDIR}-{segment.replace(':', '')}" if segment else SCORED_SUBDIR
    return StudyPaths(
        workdir=workdir,
        scored_dir=study.scored_dir or fileio.join(workdir, name),
        vocab_dir=fileio.join(workdir, VOCAB_SUBDIR),
        results_json=fileio.join(workdir, reporting.RESULTS_JSON),
        results_md=fileio.join(workdir, reporting.RESULTS_MD),
    )


def _run_plans(
    name: str,
    task_runs: list[runs.Run],
    paths: StudyPaths,
    seeds: tuple[int, int],
    default_cooldown: float,
) -> tuple[RunPlan, ...]:
    """Each run's directory, family, seeds (config.train.seed and config.data.seed moved by the
    run's seed index) and cooldown (a variant's, else the study's)."""
    train_seed, data_seed = seeds
    plans = []
    for run in task_runs:
        family = family_name(name, run)
        cooldown = float(run.overrides().get("cooldown_fraction", default_cooldown))
        cools = cooldown > 0 and run.strategy in COOLDOWN_STRATEGIES
        plans.append(
            RunPlan(
                run=run,
                directory=paths.run_dir(run),
                family=family,
                train_seed=train_seed + run.seed,
                data_seed=data_seed + run.seed,
                cooldown_fraction=cooldown if cools else 0.0,
                cooldown_task=f"{family}_{Strategy.BASE.value}" if cools else "",
                trained_as=run.trained_as().name,
            )
        )
    return tuple(plans)


def family_name(study_name: str, run: runs.Run) -> str:
    """The SeqIO task family a run trains on: the study's, or its variant's."""
    return f"{study_name}_{run.family}" if run.family else study_name


def _families(
    name: str, task_runs: list[runs.Run], default_untagged: float, default_cooldown: float
) -> tuple[FamilyPlan, ...]:
    """The task families, one per variant (runs of one variant share it), in run order."""
    by_family: dict[str, list[runs.Run]] = {}
    for run in task_runs:
        by_family.setdefault(run.family, []).append(run)
    families = []
    for members in by_family.values():
        first = members[0]
        overrides = first.overrides()
        untagged = float(overrides.get("untagged_rate", default_untagged))
        cooldown = float(overrides.get("cooldown_fraction", default_cooldown))
        strategies = list(dict.fromkeys(run.strategy for run in members))
        if cooldown > 0 and Strategy.BASE not in strategies:
            strategies.append(Strategy.BASE)  # the cooldown draws from it
        if untagged > 0 and Strategy.BASE not in strategies:
            strategies.append(Strategy.BASE)  # the untagged share is drawn from it
        families.append(
            FamilyPlan(
                name=family_name(name, first),
                overrides=tuple((key, _freeze(value)) for key, value in overrides.items()),
                untagged_rate=untagged,
                strategies=tuple(strategies),
                members=tuple((run.name, run.strategy) for run in members),
            )
        )
    return tuple(families)


def plan_study(config: ml_collections.ConfigDict, workdir: str) -> StudyPlan:
    """The study of `config` in `workdir`, validated: every stage reads this, not the config."""
    study = config.study
    strategies = parse_strategies(study.strategies)
    num_seeds = _field("config.study.num_seeds", lambda: int(study.get("num_seeds", 1)))
    _check(num_seeds >= 1, f"config.study.num_seeds must be >= 1, got {num_seeds}")
    base = conditioning_format(study)
    untagged = _fraction("config.study.untagged_rate", study.untagged_rate)
    cooldown = _fraction("config.study.cooldown_fraction", study.get("cooldown_fraction", 0))
    quantile = _quantile("config.study.threshold_quantile", study.get("threshold_quantile", -1))
    variants = parse_variants(study.get("variants"), base, untagged, cooldown)
    study_runs = runs.study_runs(strategies, [(v.strategy, v.spec) for v in variants], num_seeds)
    has_segment = any(run.strategy is Strategy.SEGMENT for run in study_runs)
    segment = str(study.get("segment", "sentence")) if has_segment else ""
    paths = _paths(study, workdir, segment)
    formats = (base, *(runs.format_fields(base, dict(v.overrides)) for v in variants))
    task_runs = runs.with_trained_runs(study_runs)
    seeds = (
        _field("config.train.seed", lambda: int(config.train.seed)),
        _field("config.data.seed", lambda: int(config.data.seed)),
    )
    run_plans = _run_plans(study.name, task_runs, paths, seeds, cooldown)
    by_name = {run_plan.name: run_plan for run_plan in run_plans}
    num_steps = _field("config.train.num_steps", lambda: int(config.train.num_steps))
    _check(num_steps >= 1, f"config.train.num_steps must be >= 1, got {num_steps}")
    return StudyPlan(
        name=study.name,
        strategies=strategies,
        num_seeds=num_seeds,
        variants=variants,
        runs=tuple(by_name[run.name] for run in study_runs),
        task_runs=run_plans,
        families=_families(study.name, task_runs, untagged, cooldown),
        conditioning=base,
        threshold_quantile=quantile,
        validation_fraction=_fraction(
            "config.study.validation_fraction", study.validation_fraction
        ),
        baseline=str(study.baseline),
        judge=_judge(study, strategies, paths),
        num_steps=num_steps,
        scoring=_scoring(study, base, paths.scored_dir, segment),
        vocabulary=_vocabulary(study, paths.vocab_dir, formats, has_segment),
        paths=paths,
    )


# ----------------------------------------------------------------------------------------------
# A run's training config.


def run_config(
    config: ml_collections.ConfigDict, run_plan: RunPlan, task_name: str, *, judge: str = ""
) -> ml_collections.ConfigDict:
    """The training config of one run: the base config without `study`, on its task, with its
    training seed (init, dropout and data order all move with it), its variant's eval fields
    and the study's fluency judge. The lower layers (training, evaluation) take ConfigDicts;
    this is the one place the study makes one."""
    result = copy.deepcopy(config)
    if "study" in result:
        with result.unlocked():
            del result["study"]
    result.data.task = task_name
    if run_plan.cooldown_fraction > 0:
        result.data.cooldown_fraction = run_plan.cooldown_fraction  # MeCo: end on untagged text
        result.data.cooldown_task = run_plan.cooldown_task
    result.train.seed = run_plan.train_seed
    result.data.seed = run_plan.data_seed
    result.eval.model_name = run_plan.name  # report rows are named by run
    result.eval.strategy = ""  # the conditioning of the task it was trained on
    if judge:
        result.eval.judge = judge
    for field, value in run_plan.run.overrides().items():
        if field in runs.EVAL_CONFIG_FIELDS:
            result.eval[field] = value
    return result
