"""SeqIO tasks for toxicity-conditioned LM pretraining over any scored corpus.

`register_toxicity_tasks` registers one task per strategy (BASE, MEDA, INST, FILTER, SEGMENT)
and the untagged mixtures over a scored corpus. A module that calls it is a *task module*:
list it in `config.data.task_modules` and every command (training, evaluation, the study,
export, the launcher) imports it by name before it looks a task up (`import_task_modules`),
as t5x's MIXTURE_OR_TASK_MODULE does. `toxjax.data.demo_tasks` is the packaged one.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence

import ml_collections
import seqio
from absl import logging

from toxjax.data.conditioning import PAPER_STRATEGIES, ConditioningFormat, Strategy
from toxjax.data.preprocessors import TARGETS, lm_preprocessors
from toxjax.data.scored_data import DEFAULT_VALIDATION_FRACTION, ScoredSpec
from toxjax.data.scored_source import ScoredShardsSource

MIX_SUFFIX = "_mix"
# config.data.task_modules of a config that has none (toxjax/configs/default.py sets the same).
DEFAULT_TASK_MODULES = ("toxjax.data.demo_tasks",)
_NAME = re.compile(r"[\w.:#]+")  # what SeqIO accepts in task names


def import_task_modules(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Imports, by name, the modules that register tasks and mixtures (config.data.task_modules).

    Every command calls this before it looks a task up, so a corpus registered in a user's own
    module trains, evaluates and exports like the demo family. Importing twice is a no-op. A
    config saved before the field existed gets the default, the demo family.
    """
    modules = config.data.get("task_modules", DEFAULT_TASK_MODULES)
    if isinstance(modules, str):
        raise TypeError(
            f"config.data.task_modules must be a tuple of module names, not {modules!r}: "
            "--config.data.task_modules=\"('toxjax.data.demo_tasks','my.tasks')\""
        )
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(
                f"config.data.task_modules: cannot import task module {name!r} ({err}); it must "
                "be importable by name (installed, or on PYTHONPATH)"
            ) from err
    return tuple(modules)


class ConditionedTask(seqio.Task):
    """A seqio.Task that remembers its family and conditioning (for replacement and eval) and
    its long-document rule (for the streaming training input, which reads the same steps)."""

    def __init__(
        self,
        *args,
        toxjax_family: str,
        strategy: Strategy,
        fmt: ConditioningFormat,
        long_documents: str = "trim",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.toxjax_family, self.strategy, self.fmt = toxjax_family, strategy, fmt
        self.long_documents = long_documents


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
    fmt: ConditioningFormat = ConditioningFormat(),
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
    family = {"toxjax_family": name, "fmt": fmt}  # what every task and mixture of it carries
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
            strategy=strategy,
            long_documents=long_documents,
            **family,
        )
        registered[strategy.value] = task_name
    for strategy_value, (mixture_name, parts) in mixtures.items():
        strategy = Strategy.parse(strategy_value)
        seqio.MixtureRegistry.add(
            mixture_name, parts, mixture_cls=ConditionedMixture, strategy=strategy, **family
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


def resolve_conditioning(task_name: str, strategy: str = "") -> tuple[Strategy, ConditioningFormat]:
    """The strategy and format to evaluate with: the training task's, unless overridden."""
    try:
        trained_strategy, fmt = conditioning_for(task_name)
    except ValueError:
        if not strategy:
            logging.warning(
                "task %r carries no conditioning (not a register_toxicity_tasks task): "
                "evaluating as BASE; set config.eval.strategy to choose",
                task_name,
            )
        trained_strategy, fmt = Strategy.BASE, ConditioningFormat()
    return (Strategy.parse(strategy) if strategy else trained_strategy), fmt


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
