"""The one definition of how a toxicity signal is written into text.

Both the SeqIO preprocessors (training data) and the evaluation prompts (inference-time prefix)
call into this module, so a change of wording or threshold changes both at once.

Every default below is OUR RECONSTRUCTION: Prabhumoye et al. (EACL 2023) do not publish their
exact MEDA string, INST wording, threshold or augmented fraction.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from toxjax import fileio
from toxjax.tf_import import import_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf


class Strategy(str, enum.Enum):
    """Pretraining data strategies compared by the study."""

    BASE = "base"  # raw text (control)
    MEDA = "meda"  # raw score written as metadata in front of the text
    INST = "inst"  # instruction saying whether the text is toxic
    FILTER = "filter"  # data-filtering baseline: drop documents above the threshold
    # Beyond the paper (Korbak et al. 2023's conditional training): a control token before
    # every segment (sentence or chunk) saying whether that segment is toxic.
    SEGMENT = "segment"

    @classmethod
    def parse(cls, value: str | Strategy) -> Strategy:
        try:
            return cls(str(value.value if isinstance(value, Strategy) else value).lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown strategy {value!r}; expected one of: {names}") from None


# The paper's strategies: the default set of a task family and of a study.
PAPER_STRATEGIES = (Strategy.BASE, Strategy.MEDA, Strategy.INST, Strategy.FILTER)
POSITIONS = ("prefix", "suffix")
PLACEMENTS = ("before", "after")
_HASH_BUCKETS = 2**31 - 1  # resolution of the augmented-fraction draw


@dataclasses.dataclass(frozen=True)
class ConditioningFormat:
    """How each strategy writes the signal; see module docstring for provenance."""

    # Which scorer attribute drives MEDA/INST/FILTER.
    attribute: str = "toxicity"
    # INST calls a document toxic, and FILTER drops it, when score > threshold.
    threshold: float = 0.5
    # MEDA line; `{attribute}` and `{score}` are substituted (score rounded to `score_precision`).
    meda_template: str = "{attribute}: {score}"
    # Decimal places of the MEDA score.
    score_precision: int = 2
    # MEDA score bins: 0 = the score itself (quantized only by score_precision); k >= 2 = the
    # lower edge of its bin among k equal-width bins of [0, 1] (k=4: 0.00, 0.25, 0.50, 0.75).
    score_bins: int = 0
    # Score written in the MEDA prefix at inference ("low toxicity").
    meda_inference_score: float = 0.0
    # Score of MEDA's toxic signal, which the evaluation contrasts with the inference one.
    meda_toxic_score: float = 1.0
    # INST wording for documents scored above the threshold.
    inst_toxic: str = "The following text is toxic:"
    # INST wording for the rest; also the inference-time instruction.
    inst_nontoxic: str = "The following text is non-toxic:"
    # INST with k >= 2 levels instead of two: wordings from least to most toxic (inference
    # asks for the first, the toxic contrast uses the last) ...
    inst_levels: tuple[str, ...] = ()
    # ... and the k - 1 increasing score cut points between them (score > cut: next level).
    inst_level_thresholds: tuple[float, ...] = ()
    # Goes between the signal and the text.
    separator: str = "\n"
    # Fraction of documents that receive the signal; the rest stay raw (Korbak et al. leave 1%).
    augment_fraction: float = 1.0
    # "prefix": signal before the text (needed for inference-time control); "suffix": after it.
    position: str = "prefix"
    # Seed of the per-document augmentation draw.
    seed: int = 0
    # Training only: signal tokens are input but not target (zero loss weight), as MeCo masks
    # its metadata (toxjax.data.signal_mask; needs the study's SentencePiece vocabulary).
    mask_signal_loss: bool = False
    # SEGMENT: the control token before a segment scored at or below the threshold (also what
    # inference asks for, right after the prompt) ...
    segment_aligned: str = "<|aligned|>"
    # ... and before a segment scored above it. Both are banned while sampling.
    segment_misaligned: str = "<|misaligned|>"
    # Evaluation: the signal "before" the prompt (the paper) or "after" it, right before the
    # continuation; "" = each strategy's own (before for MEDA and INST, after for SEGMENT).
    placement: str = ""

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if not 0.0 <= self.augment_fraction <= 1.0:
            raise ValueError(f"augment_fraction must be in [0, 1], got {self.augment_fraction}")
        if self.score_precision < 0:
            raise ValueError(f"score_precision must be >= 0, got {self.score_precision}")
        if self.score_bins == 1 or self.score_bins < 0:
            raise ValueError(f"score_bins must be 0 (no bins) or >= 2, got {self.score_bins}")
        edges = {self.format_score(i / self.score_bins) for i in range(self.score_bins)}
        if self.score_bins and len(edges) < self.score_bins:
            raise ValueError(
                f"score_bins={self.score_bins} with score_precision={self.score_precision} "
                "writes two bins alike; raise score_precision"
            )
        # Variants and configs give lists: keep tuples, so formats stay hashable.
        object.__setattr__(self, "inst_levels", tuple(self.inst_levels))
        object.__setattr__(self, "inst_level_thresholds", tuple(self.inst_level_thresholds))
        levels, cuts = self.inst_levels, self.inst_level_thresholds
        if (levels or cuts) and (
            len(levels) < 2
            or len(cuts) != len(levels) - 1
            or any(b <= a for a, b in zip(cuts, cuts[1:], strict=False))
        ):
            raise ValueError(
                f"inst_levels needs >= 2 wordings and inst_level_thresholds one fewer, "
                f"increasing cut points; got {len(levels)} wordings and cuts {list(cuts)}"
            )
        if "{score}" not in self.meda_template:
            raise ValueError(f"meda_template must contain '{{score}}': {self.meda_template!r}")
        if self.placement not in ("", *PLACEMENTS):
            raise ValueError(f"placement must be '' or one of {PLACEMENTS}, got {self.placement!r}")
        tokens = (self.segment_aligned, self.segment_misaligned)
        if not all(t.strip() == t and t for t in tokens) or tokens[0] == tokens[1]:
            raise ValueError(f"segment tokens must be two distinct, unpadded strings: {tokens}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ConditioningFormat:
        """Builds from a config dict (e.g. an ml_collections ConfigDict), rejecting typos."""
        return fileio.from_fields(cls, values, "conditioning")

    # ----- signal strings (pure Python; the evaluation uses these) -----

    def format_score(self, score: float) -> str:
        return f"{float(score):.{self.score_precision}f}"

    def meda_value(self, score: float) -> float:
        """The number MEDA writes: the score, or the lower edge of its bin."""
        if not self.score_bins:
            return float(score)
        k = self.score_bins
        return min(math.floor(float(score) * k), k - 1) / k

    def meda_signal(self, score: float) -> str:
        before, after = self._meda_parts()
        return before + self.format_score(self.meda_value(score)) + after

    def inst_signal(self, is_toxic: bool) -> str:
        """The binary wording (or, with levels, the first or last one)."""
        if self.inst_levels:
            return self.inst_levels[-1] if is_toxic else self.inst_levels[0]
        return self.inst_toxic if is_toxic else self.inst_nontoxic

    def inst_text(self, score: float) -> str:
        """INST's signal for a document of this score."""
        if not self.inst_levels:
            return self.inst_signal(self.is_toxic(score))
        level = sum(float(score) > cut for cut in self.inst_level_thresholds)
        return self.inst_levels[level]

    def is_toxic(self, score: float) -> bool:
        return float(score) > self.threshold

    def is_augmented(self, key: str) -> bool:
        """Deterministic per-document draw; identical to the TF graph version."""
        if self.augment_fraction >= 1.0:
            return True
        if self.augment_fraction <= 0.0:
            return False
        tf = import_tensorflow()  # its FarmHash: the same bucket as the graph version
        bucket = int(tf.strings.to_hash_bucket_fast(self._hash_input(key), _HASH_BUCKETS))
        return bucket < self._augment_cutoff()

    def segment_token(self, score: float) -> str:
        return self.segment_misaligned if self.is_toxic(score) else self.segment_aligned

    def condition_segments(
        self, text: str, ends: Sequence[int], scores: Sequence[float], key: str
    ) -> str:
        """SEGMENT's training text: each segment behind the control token of its own score."""
        if not self.is_augmented(key):
            return text
        starts = [0, *ends[:-1]]
        return "".join(
            self.segment_token(score) + text[start:end]
            for start, end, score in zip(starts, ends, scores, strict=True)
        )

    def condition(self, strategy: Strategy | str, text: str, score: float, key: str) -> str | None:
        """The training text for one document; None means FILTER dropped it."""
        strategy = Strategy.parse(strategy)
        if strategy is Strategy.SEGMENT:
            raise ValueError("SEGMENT conditions segments: use condition_segments")
        if strategy is Strategy.BASE:
            return text
        if strategy is Strategy.FILTER:
            return None if self.is_toxic(score) else text
        if not self.is_augmented(key):
            return text
        signal = self.meda_signal(score) if strategy is Strategy.MEDA else self.inst_text(score)
        return self._place(signal, text)

    def placement_for(self, strategy: Strategy | str) -> str:
        """Where the evaluation puts `strategy`'s signal: "before" or "after" the prompt."""
        if self.placement:
            return self.placement
        return "after" if Strategy.parse(strategy) is Strategy.SEGMENT else "before"

    def _prompt_signal(self, strategy: Strategy | str, toxic: bool) -> tuple[str, str]:
        """(prefix, suffix) around an evaluation prompt asking for (non-)toxic text."""
        strategy = Strategy.parse(strategy)
        if strategy in (Strategy.BASE, Strategy.FILTER):
            return "", ""
        if strategy is Strategy.SEGMENT:
            token = self.segment_misaligned if toxic else self.segment_aligned
            # A control token heads the segment it describes: right after the prompt, the
            # continuation; before it, the prompt and what follows.
            return ("", token) if self.placement_for(strategy) == "after" else (token, "")
        if self.position != "prefix":
            raise ValueError(
                "a signal placed as a suffix cannot condition generation; "
                "use position='prefix' for inference-time control"
            )
        if strategy is Strategy.MEDA:
            score = self.meda_toxic_score if toxic else self.meda_inference_score
            signal = self.meda_signal(score)
        else:
            signal = self.inst_signal(toxic)
        if self.placement_for(strategy) == "after":  # the signal line between prompt and text
            return "", self.separator + signal + self.separator
        return signal + self.separator, ""

    def text_prefix(self, strategy: Strategy | str, toxic: bool = False) -> str:
        """The signal in front of a text that has no prompt (held-out documents, detection
        texts), as training writes it before a document, whatever the prompt placement."""
        strategy = Strategy.parse(strategy)
        if strategy in (Strategy.BASE, Strategy.FILTER):
            return ""
        if strategy is Strategy.SEGMENT:
            return self.segment_misaligned if toxic else self.segment_aligned
        before = dataclasses.replace(self, placement="before")
        return before.toxic_prefix(strategy) if toxic else before.inference_prefix(strategy)

    def inference_prefix(self, strategy: Strategy | str) -> str:
        """What goes in front of an evaluation prompt to ask for non-toxic text."""
        return self._prompt_signal(strategy, toxic=False)[0]

    def inference_suffix(self, strategy: Strategy | str) -> str:
        """What goes right after an evaluation prompt to ask for non-toxic text (SEGMENT's
        aligned token by default; the paper's signals with placement="after")."""
        return self._prompt_signal(strategy, toxic=False)[1]

    def toxic_prefix(self, strategy: Strategy | str) -> str:
        """The opposite of `inference_prefix`: the signal of toxic text, for the evaluation's
        within-model contrasts (steerability, controllability, generative classifier)."""
        return self._prompt_signal(strategy, toxic=True)[0]

    def toxic_suffix(self, strategy: Strategy | str) -> str:
        """The opposite of `inference_suffix`."""
        return self._prompt_signal(strategy, toxic=True)[1]

    def segment_strings(self) -> list[str]:
        """SEGMENT's control tokens: whole vocabulary pieces, banned while sampling."""
        return [self.segment_aligned, self.segment_misaligned]

    def signal_strings(self) -> list[str]:
        """Fixed pieces of every signal, for vocabularies that must keep them whole."""
        before, after = self._meda_parts()
        pieces = (before.strip(), after.strip(), self.inst_toxic, self.inst_nontoxic)
        return list(dict.fromkeys(p for p in (*pieces, *self.inst_levels) if p))

    # ----- TF graph versions (the SeqIO preprocessors use these) -----

    def tf_condition(
        self, strategy: Strategy | str, text: tf.Tensor, score: tf.Tensor, key: tf.Tensor
    ) -> tf.Tensor:
        """Graph version of `condition` for MEDA/INST/BASE (FILTER is a dataset filter)."""
        tf = import_tensorflow()
        strategy = Strategy.parse(strategy)
        if strategy is Strategy.SEGMENT:
            raise ValueError("SEGMENT conditions segments: use tf_condition_segments")
        if strategy in (Strategy.BASE, Strategy.FILTER):
            return text
        score = tf.cast(score, tf.float64)  # keep float64 so digits match the Python version
        if strategy is Strategy.MEDA:
            before, after = self._meda_parts()
            if self.score_bins:
                k = float(self.score_bins)
                score = tf.minimum(tf.floor(score * k), k - 1.0) / k
            signal = tf.strings.join([before, self._tf_format_score(score), after])
        elif self.inst_levels:
            cuts = tf.constant(self.inst_level_thresholds, tf.float64)
            level = tf.reduce_sum(tf.cast(score > cuts, tf.int32))
            signal = tf.gather(tf.constant(self.inst_levels), level)
        else:
            toxic, nontoxic = tf.constant(self.inst_toxic), tf.constant(self.inst_nontoxic)
            signal = tf.where(self.tf_is_toxic(score), toxic, nontoxic)
        if self.position == "prefix":
            conditioned = tf.strings.join([signal, self.separator, text])
        else:
            conditioned = tf.strings.join([text, self.separator, signal])
        return tf.where(self.tf_is_augmented(key), conditioned, text)

    def tf_condition_segments(
        self, text: tf.Tensor, ends: tf.Tensor, scores: tf.Tensor, key: tf.Tensor
    ) -> tf.Tensor:
        """Graph version of `condition_segments` (ends in characters, as the scorer wrote)."""
        tf = import_tensorflow()
        ends = tf.cast(ends, tf.int64)
        starts = tf.concat([tf.zeros([1], tf.int64), ends[:-1]], axis=0)
        pieces = tf.strings.substr(text, starts, ends - starts, unit="UTF8_CHAR")
        aligned, misaligned = (
            tf.constant(self.segment_aligned),
            tf.constant(self.segment_misaligned),
        )
        tokens = tf.where(self.tf_is_toxic(scores), misaligned, aligned)
        conditioned = tf.strings.reduce_join(tf.strings.join([tokens, pieces]))
        return tf.where(self.tf_is_augmented(key), conditioned, text)

    def tf_is_toxic(self, score: tf.Tensor) -> tf.Tensor:
        tf = import_tensorflow()
        # Compare in float64 so graph and Python agree on scores at the threshold.
        return tf.cast(score, tf.float64) > tf.constant(self.threshold, tf.float64)

    def tf_is_augmented(self, key: tf.Tensor) -> tf.Tensor:
        tf = import_tensorflow()
        if self.augment_fraction >= 1.0:
            return tf.constant(True)
        if self.augment_fraction <= 0.0:
            return tf.constant(False)
        hashed = tf.strings.to_hash_bucket_fast(
            tf.strings.join([f"{self.seed}:", key]), _HASH_BUCKETS
        )
        return hashed < self._augment_cutoff()

    # ----- internals -----

    def _meda_parts(self) -> tuple[str, str]:
        template = self.meda_template.replace("{attribute}", self.attribute)
        before, _, after = template.partition("{score}")
        return before, after

    def _tf_format_score(self, score: tf.Tensor) -> tf.Tensor:
        tf = import_tensorflow()
        # printf-style "%.Nf" on float64: the same correctly rounded digits as Python's format.
        return tf.strings.as_string(score, precision=self.score_precision)

    def _place(self, signal: str, text: str) -> str:
        if self.position == "prefix":
            return signal + self.separator + text
        return text + self.separator + signal

    def _hash_input(self, key: str) -> str:
        return f"{self.seed}:{key}"

    def _augment_cutoff(self) -> int:
        return int(self.augment_fraction * _HASH_BUCKETS)


def stable_doc_key(text: str) -> str:
    """A document key for corpora with no id field: the text's digest."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
