"""The models a study trains: strategies x training seeds, plus ablation variants.

A variant is one strategy trained with changed conditioning, written in config.study.variants as
    "<strategy>:<field>=<value>[;<field>=<value>...]"
where a field is any ConditioningFormat field (threshold, inst_toxic, inst_nontoxic, ...) or one
of VARIANT_STUDY_FIELDS. For example
    --config.study.variants="('inst:threshold_quantile=0.3', 'inst:untagged_rate=0.1')"
trains two more INST models next to the plain ones, so an ablation is one command. Each run
(strategy, variant, seed) has its own workdir and report row: "inst", "inst_seed1",
"inst@threshold_quantile=0.3", "inst@threshold_quantile=0.3_seed1".

A variant that changes only the evaluation (EVAL_ONLY_FIELDS, e.g. 'inst:placement=after')
trains nothing: it evaluates the checkpoints of the run it would otherwise train again
identically (Run.trained_as), so an evaluation ablation costs only its evaluations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toxjax import fileio
from toxjax.data.conditioning import ConditioningFormat, Strategy

# Study fields a variant may set besides the conditioning format.
VARIANT_STUDY_FIELDS = ("untagged_rate", "threshold_quantile", "cooldown_fraction")
# config.eval fields a variant may set: decoding with guidance (a sweep of guidance_scale is
# one command: 'meda:guidance_scale=1', 'meda:guidance_scale=3', ...).
EVAL_CONFIG_FIELDS = ("guidance_scale", "guidance_form")
# Fields that change only the evaluation (prompts or decoding), never a training document.
EVAL_ONLY_FIELDS = ("placement", "meda_inference_score", "meda_toxic_score", *EVAL_CONFIG_FIELDS)
_SAFE = re.compile(r"[^\w.=@+-]+")


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained model of the study."""

    strategy: Strategy
    seed: int = 0  # index of the training seed (0 = config.train.seed itself)
    variant: str = ""  # "field=value;..." overrides, "" = the study's own settings

    @property
    def name(self) -> str:
        """Report row and workdir subdirectory; the plain seed-0 run is just the strategy."""
        name = self.strategy.value
        if self.variant:
            name += "@" + _SAFE.sub("_", self.variant.replace(";", "+"))
        return name + (f"_seed{self.seed}" if self.seed else "")

    @property
    def family(self) -> str:
        """Suffix of the task family the run trains on: "" = the study's own, else a digest of
        the variant (SeqIO names allow few characters; config.json keeps the variant)."""
        if not self.variant:
            return ""
        return "v" + hashlib.sha1(self.variant.encode()).hexdigest()[:8]

    def overrides(self) -> dict[str, Any]:
        return parse_overrides(self.variant)

    def trained_as(self) -> Run:
        """The run whose checkpoints this one evaluates: itself, or without its evaluation-only
        overrides (which would train the very same model again)."""
        if not any(field in EVAL_ONLY_FIELDS for field in self.overrides()):
            return self
        kept = [
            item
            for item in self.variant.split(";")
            if item.strip() and item.split("=", 1)[0].strip() not in EVAL_ONLY_FIELDS
        ]
        return dataclasses.replace(self, variant=";".join(kept))


def _value(text: str) -> Any:
    """A variant value: JSON (numbers, true/false, quoted strings) or a bare string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.replace("\\n", "\n")


def parse_overrides(variant: str) -> dict[str, Any]:
    """ "threshold=0.1;inst_toxic=Rude:" -> {"threshold": 0.1, "inst_toxic": "Rude:"}."""
    overrides: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(ConditioningFormat)}
    known |= {*VARIANT_STUDY_FIELDS, *EVAL_CONFIG_FIELDS}
    for item in filter(None, (part.strip() for part in variant.split(";"))):
        field, sep, text = item.partition("=")
        if not sep or field.strip() not in known:
            raise ValueError(
                f"config.study.variants: {item!r} is not <field>=<value> with a field of "
                f"{sorted(known)}"
            )
        overrides[field.strip()] = _value(text.strip())
    return overrides


def parse_variant(spec: str) -> tuple[Strategy, str]:
    """ "inst:threshold=0.1" -> (Strategy.INST, "threshold=0.1")."""
    strategy, sep, variant = spec.partition(":")
    if not sep or not variant.strip():
        raise ValueError(
            f"config.study.variants: {spec!r} is not '<strategy>:<field>=<value>[;...]'"
        )
    parse_overrides(variant)  # fail on typos before anything trains
    return Strategy.parse(strategy.strip()), variant.strip()


def study_runs(
    strategies: Sequence[Strategy],
    variants: Sequence[tuple[Strategy, str]] = (),
    num_seeds: int = 1,
) -> list[Run]:
    """Every run in training order: strategies (then variants) seed by seed, so a stopped
    multi-seed study has whole seeds finished first."""
    if num_seeds < 1:
        raise ValueError(f"config.study.num_seeds must be >= 1, got {num_seeds}")
    runs = []
    for seed in range(num_seeds):
        runs += [Run(strategy, seed) for strategy in strategies]
        runs += [Run(strategy, seed, variant) for strategy, variant in variants]
    if len({run.name for run in runs}) != len(runs):
        raise ValueError(f"config.study.variants repeats a run: {[r.name for r in runs]}")
    return runs


def with_trained_runs(study_runs: list[Run]) -> list[Run]:
    """The study's runs and the runs whose checkpoints they evaluate, without repeats, in order
    (every one needs its task registered)."""
    return list({r.name: r for run in study_runs for r in (run.trained_as(), run)}.values())


def score_quantile(scored_dir: str, attribute: str, quantile: float) -> float:
    """The `quantile` of the scored corpus' `attribute` scores (a threshold that tags a fixed
    share of documents, whatever the scorer's calibration)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"threshold_quantile must be in (0, 1), got {quantile}")
    scores = []
    for path in fileio.glob_files(fileio.join(scored_dir, "shards", "*.jsonl")):
        for line, record in fileio.read_jsonl(path, allow_empty=True):
            value = (record.get("scores") or {}).get(attribute)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise fileio.FileFormatError(
                    f"{path}:{line}: field 'scores.{attribute}' missing or not a number"
                )
            scores.append(float(value))
    if not scores:
        raise fileio.FileFormatError(f"{scored_dir}: no scored records to take a quantile of")
    return float(np.quantile(np.asarray(scores), quantile))


def format_fields(base: ConditioningFormat, overrides: Mapping[str, Any]) -> ConditioningFormat:
    """`base` with a variant's format fields (its study and eval fields are not the format's)."""
    skip = {*VARIANT_STUDY_FIELDS, *EVAL_CONFIG_FIELDS}
    fields = {k: v for k, v in overrides.items() if k not in skip}
    return dataclasses.replace(base, **fields)


def run_format(
    base: ConditioningFormat, overrides: Mapping[str, Any], scored_dir: str
) -> ConditioningFormat:
    """The conditioning format of a run: the study's, with a variant's format fields; a
    threshold_quantile becomes the threshold at that quantile of the scored corpus."""
    fmt = format_fields(base, overrides)
    quantile = overrides.get("threshold_quantile")
    if quantile is not None and float(quantile) >= 0:
        threshold = score_quantile(scored_dir, fmt.attribute, float(quantile))
        fmt = dataclasses.replace(fmt, threshold=threshold)
    return fmt
