"""SeqIO tasks for toxicity-conditioned LM pretraining: the demo family and users' corpora.

`import toxjax.data.tasks` registers, for the embedded demo corpus (byte vocabulary):

    toxjax_demo_base     raw text (control)
    toxjax_demo_meda     "toxicity: 0.93\\n" + text
    toxjax_demo_inst     "The following text is toxic:\\n" / "...non-toxic:\\n" + text
    toxjax_demo_filter   raw text, documents scored above the threshold dropped
    toxjax_demo_inst_mix INST, with DEMO_UNTAGGED_RATE of the examples drawn untagged from BASE

The mixture follows Korbak et al. (2023), who leave a small share of pretraining data without
control tokens so the model keeps an unconditional mode (prompts with no signal still get
fluent text), and cf. MeCo's metadata-free cooldown. Unlike augment_fraction < 1 (which leaves
fixed documents untagged), the mixture draws untagged copies of any document at random.

Importing is cheap: the demo corpus is scored (offline scorer, about a second) the first time
a demo task is read, into $TOXJAX_DATA_DIR (default ~/.cache/toxjax), once per scorer version
and corpus content, guarded by a file lock.

`register_toxicity_tasks` registers the same family over any scored corpus.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

import seqio
from absl import logging

from toxjax import fileio
from toxjax.data.conditioning import PAPER_STRATEGIES, ConditioningFormat, Strategy
from toxjax.data.preprocessors import TARGETS, lm_preprocessors
from toxjax.data.scored_data import (
    DEFAULT_VALIDATION_FRACTION,
    MANIFEST,
    ScoredShardsSource,
    ScoredSpec,
)

DATA_DIR_ENV = "TOXJAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/toxjax"
DEMO_NAME = "toxjax_demo"
# Our reconstruction of the paper's formats (see toxjax.data.conditioning); the evaluation of the
# demo tasks must condition with this same object.
DEMO_FORMAT = ConditioningFormat()
# Share of the demo INST mixture drawn untagged from BASE (Korbak et al. leave 1% untagged; 5%
# keeps the untagged mode visible in a corpus of a few thousand documents).
DEMO_UNTAGGED_RATE = 0.05
MIX_SUFFIX = "_mix"
_NAME = re.compile(r"[\w.:#]+")  # what SeqIO accepts in task names


class ConditionedTask(seqio.Task):
    """A seqio.Task that remembers its family and conditioning (for replacement and eval)."""

    def __init__(
        self, *args, toxjax_family: str, strategy: Strategy, fmt: ConditioningFormat, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.toxjax_family, self.strategy, self.fmt = toxjax_family, strategy, fmt


class ConditionedMixture(seqio.Mixture):
    """A seqio.Mixture of a conditioned task with untagged (or other) data."""

    def __init__(
        self, *args, toxjax_family: str, strategy: Strategy, fmt: ConditioningFormat, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.toxjax_family, self.strategy, self.fmt = toxjax_family, strategy, fmt


# ----------------------------------------------------------------------------------------------
# Registration.


def register_toxicity_tasks(
    name: str,
    scored: ScoredSpec | Callable[[], str],
    *,
    vocabulary: seqio.Vocabulary,
    fmt: ConditioningFormat = DEMO_FORMAT,
    strategies: Sequence[Strategy | str] = PAPER_STRATEGIES,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    split_seed: int = 0,
    mixture_with: Sequence[tuple[str, float]] | None = None,
    mix_strategies: Sequence[Strategy | str] | None = None,
    add_eos: bool = True,
    long_documents: str = "trim",
    shuffle_buffer_size: int | None = seqio.SHUFFLE_BUFFER_SIZE,
) -> dict[str, str]:
    """Registers `{name}_{strategy}` LM tasks (and `{name}_{strategy}_mix` mixtures).

    scored: a scored directory (split into "train"/"validation" by a hash of the doc key, with
        `validation_fraction` held out), a {split: directory} mapping, or a zero-argument
        callable returning a directory on first use.
    mixture_with: (task or mixture name, rate) pairs; for each strategy in `mix_strategies`, a
        mixture draws each example from those with the given rates and from the strategy task
        with the rest (1 - sum of rates). Names of this family (e.g. f"{name}_base") may be used.
        mix_strategies defaults to those of MEDA, INST and SEGMENT that are in `strategies`.
    Returns {strategy: task name} plus {f"{strategy}_mix": mixture name}.

    Registering a family name again replaces all of its previous tasks and mixtures (so
    re-running a config or reloading a module is harmless). A name already registered by
    anything else is an error. Mixtures defined elsewhere keep the task objects they were
    built with, so re-register them too after replacing a family they use.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"family name {name!r} must match {_NAME.pattern} (a SeqIO task name)")
    parsed = _unique_strategies(strategies, "strategies")
    preprocessors = {s: lm_preprocessors(s, fmt, long_documents=long_documents) for s in parsed}
    task_names = {s.value: f"{name}_{s.value}" for s in parsed}
    mixtures = _plan_mixtures(name, parsed, task_names, mixture_with, mix_strategies)
    new_names = [*task_names.values(), *(m for m, _ in mixtures.values())]
    _check_names_are_free(name, new_names)

    source = ScoredShardsSource(
        scored,
        attribute=fmt.attribute,
        validation_fraction=validation_fraction,
        split_seed=split_seed,
        segments=Strategy.SEGMENT in parsed,
    )
    output_features = {TARGETS: seqio.Feature(vocabulary, add_eos=add_eos)}

    unregister_family(name)
    registered: dict[str, str] = {}
    for strategy in parsed:
        task_name = task_names[strategy.value]
        seqio.TaskRegistry.add(
            task_name,
            source=source,
            preprocessors=preprocessors[strategy],
            output_features=output_features,
            shuffle_buffer_size=shuffle_buffer_size,
            task_cls=ConditionedTask,
            toxjax_family=name,
            strategy=strategy,
            fmt=fmt,
        )
        registered[strategy.value] = task_name
    for strategy_value, (mixture_name, parts) in mixtures.items():
        seqio.MixtureRegistry.add(
            mixture_name,
            parts,
            mixture_cls=ConditionedMixture,
            toxjax_family=name,
            strategy=Strategy.parse(strategy_value),
            fmt=fmt,
        )
        registered[strategy_value + MIX_SUFFIX] = mixture_name
    return registered


def family_members(name: str) -> list[str]:
    """Names of the tasks and mixtures registered by `register_toxicity_tasks(name, ...)`."""
    # Read from the seqio registries (not module state), so reloading this module still finds
    # the families it registered before.
    return [
        provider
        for registry in (seqio.TaskRegistry, seqio.MixtureRegistry)
        for provider in list(registry.names())
        if getattr(registry.get(provider), "toxjax_family", None) == name
    ]


def unregister_family(name: str) -> None:
    """Removes every task and mixture a `register_toxicity_tasks(name, ...)` call added."""
    for provider in family_members(name):
        seqio.MixtureRegistry.remove(provider)
        seqio.TaskRegistry.remove(provider)


def conditioning_for(task_or_mixture: str) -> tuple[Strategy, ConditioningFormat]:
    """How a registered toxjax task was conditioned, for evaluating a model trained on it."""
    provider = None
    for registry in (seqio.TaskRegistry, seqio.MixtureRegistry):
        if task_or_mixture in registry.names():
            provider = registry.get(task_or_mixture)
    if getattr(provider, "toxjax_family", None) is None:
        raise ValueError(
            f"{task_or_mixture!r} is not a task or mixture registered by "
            "toxjax.data.tasks.register_toxicity_tasks"
        )
    return provider.strategy, provider.fmt


def inference_prefix(task_or_mixture: str) -> str:
    """The prompt prefix asking a model trained on this task for non-toxic text."""
    strategy, fmt = conditioning_for(task_or_mixture)
    return fmt.inference_prefix(strategy)


def _unique_strategies(values: Sequence[Strategy | str], what: str) -> list[Strategy]:
    if isinstance(values, str | Strategy):
        values = [values]
    parsed = [Strategy.parse(v) for v in values]
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"{what} lists a strategy twice: {[s.value for s in parsed]}")
    return parsed


def _plan_mixtures(
    name: str,
    strategies: list[Strategy],
    task_names: Mapping[str, str],
    mixture_with: Sequence[tuple[str, float]] | None,
    mix_strategies: Sequence[Strategy | str] | None,
) -> dict[str, tuple[str, list[tuple[str, float]]]]:
    """{strategy: (mixture name, [(provider, rate), ...])}, validated before anything changes."""
    if not mixture_with:
        return {}
    partners = [(str(other), float(rate)) for other, rate in mixture_with]
    for other, rate in partners:
        if not rate > 0:
            raise ValueError(f"mixture_with: rate of {other!r} must be > 0, got {rate}")
        replaced = set(family_members(name))
        registered_elsewhere = other not in replaced and (
            other in seqio.TaskRegistry.names() or other in seqio.MixtureRegistry.names()
        )
        if other not in task_names.values() and not registered_elsewhere:
            raise ValueError(
                f"mixture_with: {other!r} is neither a task of this family "
                f"({sorted(task_names.values())}) nor a registered task or mixture"
            )
    partner_total = sum(rate for _, rate in partners)
    if partner_total >= 1.0:
        raise ValueError(
            f"mixture_with rates sum to {partner_total}; they are shares of the mixture and "
            "must leave a positive share (1 - sum) for the conditioned task"
        )
    if mix_strategies is None:
        conditioned = (Strategy.MEDA, Strategy.INST, Strategy.SEGMENT)
        mix_strategies = [s for s in conditioned if s in strategies]
    plans = {}
    for strategy in _unique_strategies(mix_strategies, "mix_strategies"):
        if strategy not in strategies:
            raise ValueError(f"mix_strategies: {strategy.value!r} is not in strategies")
        own = task_names[strategy.value]
        if any(other == own for other, _ in partners):
            continue  # a task mixed with itself is just the task
        parts = [(own, 1.0 - partner_total), *partners]
        plans[strategy.value] = (own + MIX_SUFFIX, parts)
    return plans


def _check_names_are_free(family: str, names: Sequence[str]) -> None:
    ours = set(family_members(family))
    for provider in names:
        taken = provider in seqio.TaskRegistry.names() or provider in seqio.MixtureRegistry.names()
        if taken and provider not in ours:
            raise ValueError(
                f"{provider!r} is already registered by someone else; choose another family "
                f"name than {family!r} (re-registering the same family replaces it)"
            )


# ----------------------------------------------------------------------------------------------
# The demo corpus, scored on first use.


def data_dir() -> str:
    return os.path.expanduser(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _demo_fingerprint() -> str:
    """Changes when the demo corpus or the offline scorer changes, so a stale cache is unused."""
    from toxjax.demo import template_corpus

    digest = hashlib.sha256()
    for record in template_corpus.generate():
        digest.update(json.dumps(record, sort_keys=True).encode())
    digest.update(importlib.metadata.version("alt-profanity-check").encode())
    return digest.hexdigest()[:12]


def _is_complete(directory: str) -> bool:
    try:
        return fileio.read_json(fileio.join(directory, MANIFEST)).get("complete") is True
    except (OSError, ValueError):  # missing or unreadable: not complete
        return False


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """One process at a time (other processes of a test run, several trainings on one host)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def demo_scored_dir(root: str | None = None) -> str:
    """The scored demo corpus, scoring it with the offline scorer if it is not cached yet."""
    root = os.path.join(root or data_dir(), "demo")
    directory = os.path.join(root, f"offline-{_demo_fingerprint()}")
    if _is_complete(directory):
        return directory
    os.makedirs(root, exist_ok=True)
    with _file_lock(directory + ".lock"):
        if not _is_complete(directory):  # another process may have finished meanwhile
            from toxjax.scoring import job

            logging.info("Scoring the demo corpus into %s (once)", directory)
            job.score_corpus("demo", directory, "offline", progress=False)
    return directory


def register_demo_tasks() -> dict[str, str]:
    """The demo family (see module docstring); called on import, safe to call again."""
    return register_toxicity_tasks(
        DEMO_NAME,
        demo_scored_dir,
        vocabulary=seqio.ByteVocabulary(),
        fmt=DEMO_FORMAT,
        mixture_with=[(f"{DEMO_NAME}_{Strategy.BASE.value}", DEMO_UNTAGGED_RATE)],
        mix_strategies=(Strategy.INST,),
    )


DEMO_TASKS = register_demo_tasks()
