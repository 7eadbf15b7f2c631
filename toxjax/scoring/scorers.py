"""Toxicity scorers: a list of texts in, one float32 array per attribute out.

Every score written to disk carries the `scorer_id` of the model that produced it, so corpora
scored by different models (or versions) can never be mixed up silently.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import importlib.metadata
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from toxjax import fileio

if TYPE_CHECKING:  # torch is imported on first use: the offline scorer must not pay for it.
    import torch


class Scorer(abc.ABC):
    """A toxicity model behind one interface, so the scoring job does not care which."""

    name: str
    version: str
    attributes: tuple[str, ...]
    # The implementation that runs the model, where one model has several ("torch", "jax"):
    # their scores differ in the last float bits, so they must not be mixed unknowingly.
    backend: str | None = None

    @property
    def scorer_id(self) -> str:
        """Identity stored with every score: which model, version (and backend) produced it."""
        base = f"{self.name}@{self.version}"
        return f"{base}:{self.backend}" if self.backend else base

    @abc.abstractmethod
    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Scores `texts`; returns {attribute: float32 array of len(texts)}."""

    def _check_texts(self, texts: Sequence[str]) -> list[str]:
        """Rejects non-strings early: a None deep inside a batch gives unreadable errors."""
        if isinstance(texts, str):
            raise TypeError(f"{type(self).__name__}.score expects a sequence of str, got one str")
        checked = list(texts)
        for index, text in enumerate(checked):
            if not isinstance(text, str):
                raise TypeError(
                    f"{type(self).__name__}.score: texts[{index}] is {type(text).__name__}, "
                    "expected str"
                )
        return checked

    def _empty_result(self) -> dict[str, np.ndarray]:
        return {attribute: np.zeros((0,), np.float32) for attribute in self.attributes}


class OfflineScorer(Scorer):
    """alt-profanity-check: a linear n-gram model shipped inside the wheel, needs no network."""

    name = "profanity_check"
    attributes = ("toxicity",)

    def __init__(self) -> None:
        # Imported lazily: loading the joblib model takes a moment and pins sklearn.
        import profanity_check

        self._predict_prob = profanity_check.predict_prob
        self.version = importlib.metadata.version("alt-profanity-check")

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        checked = self._check_texts(texts)
        if not checked:  # scikit-learn rejects a 0-row matrix.
            return self._empty_result()
        probabilities = np.asarray(self._predict_prob(checked), dtype=np.float32)
        return {"toxicity": np.atleast_1d(probabilities).reshape(len(checked))}


AGGREGATIONS = ("max", "mean", "first")
_NO_WEIGHTS_HINT = (
    "Ways out: pass a local Detoxify checkpoint instead (--scorer=detoxify:/path/to/model.ckpt "
    "or --scorer=detoxify-jax:/path/to/model.ckpt, i.e. "
    "make_scorer('detoxify:/path/to/model.ckpt')), or use the offline scorer "
    "(--scorer=offline), which ships its model inside the alt-profanity-check wheel."
)


def _file_digest(path: str, length: int = 12) -> str:
    """Short sha256 of a checkpoint, so two different local files never share a scorer id."""
    digest = hashlib.sha256()
    with fileio.open_read(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def resolve_torch_device(device: str) -> torch.device:
    """Parses and checks a device string up front, before minutes of weight loading."""
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"Unknown torch device {device!r} for the Detoxify scorer; use 'cpu', 'cuda' or "
            f"'cuda:<index>' ({error})"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"Device {device!r} requested but torch sees no CUDA device "
                f"(torch {torch.__version__}); use device='cpu'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Device {device!r} requested but MPS is not available; use 'cpu'")
    return resolved


@dataclasses.dataclass(frozen=True)
class DetoxifySource:
    """Which Detoxify model a spec names: a released model type or a local checkpoint file."""

    model_type: str | None  # "original", "unbiased", ... (weights fetched by Detoxify)
    checkpoint_path: str | None  # absolute path of a local .ckpt
    base_name: str  # the scorer name before window settings: detoxify-<type>|detoxify-ckpt-<sha>


def resolve_detoxify_model(model: str) -> DetoxifySource:
    """Parses a Detoxify model argument; fails before any weights are loaded."""
    from detoxify import detoxify as detoxify_module

    known_types = tuple(detoxify_module.MODEL_URLS)
    if model in known_types:
        return DetoxifySource(model, None, f"detoxify-{model}")
    if os.path.isfile(model):
        return DetoxifySource(None, os.path.abspath(model), f"detoxify-ckpt-{_file_digest(model)}")
    if os.sep in model or model.endswith((".ckpt", ".pt", ".pth")):
        raise FileNotFoundError(f"Detoxify checkpoint file not found: {model!r}")
    raise ValueError(
        f"Unknown Detoxify model {model!r}: expected one of {known_types} or the path "
        "of a local checkpoint file"
    )


class WindowedScorer(Scorer):
    """A transformer classifier scored over token windows, whatever runs the forward pass.

    Tokenizing, windowing and aggregating live here, so the torch and JAX backends of one
    Detoxify model differ only in `score_windows` and agree on every long document.
    """

    tokenizer: Any

    def __init__(self, *, batch_size: int, max_length: int, aggregate: str, stride: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}")
        self.batch_size = batch_size
        self.max_length = max_length
        self.aggregate = aggregate
        self.stride = stride

    def _check_window(self, max_positions: int) -> None:
        """Validates max_length and stride against the tokenizer and the position table."""
        limit = self.tokenizer.model_max_length
        if not 0 < limit <= 100_000:  # "no limit" sentinel: fall back to the position table.
            limit = max_positions
        specials = self.tokenizer.num_special_tokens_to_add(pair=False)
        if not specials < self.max_length <= limit:
            raise ValueError(
                f"max_length must be in ({specials}, {limit}] for this model, got {self.max_length}"
            )
        if not 0 <= self.stride < self.max_length - specials:
            raise ValueError(
                f"stride must be in [0, {self.max_length - specials}) for "
                f"max_length={self.max_length}, got {self.stride}"
            )

    def _window_name(self, base_name: str) -> str:
        """Window settings change long-document scores, so they are part of the identity."""
        non_default = []
        if self.max_length != 512:
            non_default.append(f"max_length={self.max_length}")
        if self.aggregate != "max":
            non_default.append(f"aggregate={self.aggregate}")
        if self.stride:
            non_default.append(f"stride={self.stride}")
        return "+".join([base_name, *non_default])

    def windows(self, texts: Sequence[str]) -> tuple[dict[str, list[list[int]]], np.ndarray]:
        """Tokenizes `texts` into windows; returns (model inputs per window, doc index per window).

        The first window of a document is exactly Detoxify's truncated encoding.
        """
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=self.aggregate != "first",
            padding=False,
        )
        if "overflow_to_sample_mapping" in encoded:
            doc_index = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
        else:
            doc_index = np.arange(len(texts), dtype=np.int64)
        inputs = {
            key: encoded[key]
            for key in ("input_ids", "attention_mask", "token_type_ids")
            if key in encoded
        }
        return inputs, doc_index

    @abc.abstractmethod
    def score_windows(self, inputs: dict[str, list[list[int]]]) -> np.ndarray:
        """Scores windows (any order in, input order out); returns [windows, attributes]."""

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        checked = self._check_texts(texts)
        if not checked:
            return self._empty_result()
        inputs, doc_index = self.windows(checked)
        window_scores = self.score_windows(inputs)
        num_docs, num_attributes = len(checked), len(self.attributes)
        if self.aggregate == "max":
            doc_scores = np.full((num_docs, num_attributes), -np.inf, np.float32)
            np.maximum.at(doc_scores, doc_index, window_scores)
        elif self.aggregate == "mean":
            doc_scores = np.zeros((num_docs, num_attributes), np.float32)
            np.add.at(doc_scores, doc_index, window_scores)
            doc_scores /= np.bincount(doc_index, minlength=num_docs)[:, None]
        else:  # "first": one window per document, in document order.
            doc_scores = window_scores
        return {
            attribute: np.ascontiguousarray(doc_scores[:, i], dtype=np.float32)
            for i, attribute in enumerate(self.attributes)
        }


def load_error(source: DetoxifySource, error: Exception) -> RuntimeError:
    """A download or load failure as an actionable error naming both ways out."""
    if source.checkpoint_path is None:
        what = (
            f"Could not load the Detoxify {source.model_type!r} weights: they are "
            "downloaded from GitHub and Hugging Face on first use, which failed (no network?)."
        )
    else:
        what = (
            f"Could not load the Detoxify checkpoint {source.checkpoint_path!r}: it must "
            "be a torch file holding 'config' and 'state_dict', whose "
            "config.arch.args.model_type is a local folder when offline."
        )
    return RuntimeError(f"{what} Cause: {type(error).__name__}: {error}. {_NO_WEIGHTS_HINT}")


class DetoxifyScorer(WindowedScorer):
    """Detoxify models in PyTorch, run with length-sorted batches and windows over long documents.

    `Detoxify.predict` pads the whole input to its longest text in one forward pass and
    truncates at 512 tokens; this wrapper keeps Detoxify's model, tokenizer and sigmoid head
    (so short texts score exactly as `predict` scores them) but batches by length, so short
    texts are not padded to the longest one, and scores every window of a long document.
    """

    backend = "torch"

    def __init__(
        self,
        model: str = "original",
        *,
        device: str = "cpu",
        batch_size: int = 32,
        max_length: int = 512,
        aggregate: str = "max",
        stride: int = 0,
        progress: bool = False,
        huggingface_config_path: str | None = None,
    ) -> None:
        """Loads a Detoxify model.

        Args:
          model: a Detoxify model type ("original", "unbiased", "multilingual",
            "original-small", "unbiased-small") or the path of a local checkpoint file.
          device: torch device, e.g. "cpu", "cuda", "cuda:1".
          batch_size: windows per forward pass.
          max_length: tokens per window, special tokens included (Detoxify models: <= 512).
          aggregate: how window scores become a document score: "max" (a document is as
            toxic as its worst part), "mean", or "first" (score the first window only, which
            is what `Detoxify.predict` does).
          stride: tokens shared by consecutive windows, so no phrase is cut in two unseen.
          progress: show a tqdm bar over batches.
          huggingface_config_path: forwarded to Detoxify for offline config/tokenizer files.
        """
        from detoxify import detoxify as detoxify_module

        super().__init__(
            batch_size=batch_size, max_length=max_length, aggregate=aggregate, stride=stride
        )
        self.device = resolve_torch_device(device)
        self.progress = progress
        self.version = importlib.metadata.version("detoxify")
        self.source = resolve_detoxify_model(model)
        self.model_type, self.checkpoint_path = self.source.model_type, self.source.checkpoint_path
        try:
            self._detoxify = detoxify_module.Detoxify(
                model_type=self.model_type or "original",
                checkpoint=self.checkpoint_path,
                device=str(self.device),
                huggingface_config_path=huggingface_config_path,
            )
        except Exception as error:
            raise load_error(self.source, error) from error
        self.model = self._detoxify.model.eval()
        self.tokenizer = self._detoxify.tokenizer
        self.attributes = tuple(self._detoxify.class_names)
        self._check_window(self.model.config.max_position_embeddings)
        self.name = self._window_name(self.source.base_name)

    def score_windows(self, inputs: dict[str, list[list[int]]]) -> np.ndarray:
        """Scores windows in length-sorted batches; returns [num_windows, num_attributes]."""
        import torch

        lengths = np.asarray([len(ids) for ids in inputs["input_ids"]])
        # Longest first: an out-of-memory batch size fails on the first batch, not the last.
        order = np.argsort(-lengths, kind="stable")
        scores = np.zeros((len(lengths), len(self.attributes)), np.float32)
        starts = range(0, len(order), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"scoring ({self.scorer_id})", unit="batch")
        with torch.inference_mode():
            for start in starts:
                batch_rows = order[start : start + self.batch_size]
                features = [{key: ids[row] for key, ids in inputs.items()} for row in batch_rows]
                batch = self.tokenizer.pad(features, padding=True, return_tensors="pt")
                logits = self.model(**batch.to(self.device))[0]
                # Detoxify's own head: an independent sigmoid per label, for every model type.
                scores[batch_rows] = torch.sigmoid(logits).float().cpu().numpy()
        return scores
