"""The scored shards written by `toxjax.scoring.job`, read and checked record by record.

A record is the document, the configured attribute's score and a stable document key (the
record's "id", else the digest of its text). The key drives both the hash-based validation
split and the per-document augmentation draw, so both are reproducible across runs, hosts and
shard layouts. Files are read through toxjax.fileio (local paths and gs:// alike).

Plain Python: the vocabulary command reads corpora without loading TensorFlow; the SeqIO source
over these shards is `toxjax.data.scored_source`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from toxjax import fileio
from toxjax.data.conditioning import stable_doc_key
from toxjax.scoring.corpora import get_field
from toxjax.scoring.segments import check_ends

MANIFEST = "manifest.json"
TRAIN = "train"
VALIDATION = "validation"
DEFAULT_VALIDATION_FRACTION = 0.05
# Per-split directories, or one directory split by key hash.
ScoredSpec = str | Mapping[str, str]


class ScoredDataError(ValueError):
    """A scored directory or record cannot be used; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class ScoredShard:
    path: str
    num_records: int


@dataclasses.dataclass(frozen=True)
class ScoredCorpus:
    """What a scored directory's manifest promises, checked for the attribute we need."""

    directory: str
    scorer: str
    attributes: tuple[str, ...]
    text_field: str
    shards: tuple[ScoredShard, ...]
    segment: str = ""  # how the scoring job cut documents into scored segments ("": it did not)

    @property
    def num_records(self) -> int:
        return sum(shard.num_records for shard in self.shards)


def _join(directory: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.join(directory, path)


def load_scored_corpus(directory: str, attribute: str | None = "toxicity") -> ScoredCorpus:
    """Reads and checks `directory/manifest.json`; raises ScoredDataError saying what is wrong.

    attribute=None skips the attribute check (for readers of the text alone).
    """
    manifest_path = _join(directory, MANIFEST)
    if not fileio.exists(manifest_path):
        raise ScoredDataError(
            f"{manifest_path}: no scoring manifest. Score the corpus first: "
            f"python -m toxjax.scoring --input=... --output_dir={directory}"
        )
    try:
        manifest = fileio.read_json(manifest_path)
    except fileio.FileFormatError as e:
        raise ScoredDataError(str(e)) from None
    if not isinstance(manifest, dict):
        raise ScoredDataError(f"{manifest_path}: expected a JSON object")

    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        if name not in manifest:
            raise ScoredDataError(f"{manifest_path}: field {name!r} missing")
        if not isinstance(manifest[name], kind):
            raise ScoredDataError(f"{manifest_path}: field {name!r} has the wrong type")
        return manifest[name]

    if field("complete", bool) is not True:
        raise ScoredDataError(
            f"{manifest_path}: field 'complete' is false: scoring of {directory} did not "
            "finish. Rerun the same toxjax.scoring command to complete it (finished shards "
            "are kept)."
        )
    attributes = tuple(field("attributes", list))
    if attribute is not None and attribute not in attributes:
        raise ScoredDataError(
            f"{manifest_path}: field 'attributes' lacks {attribute!r} (scorer "
            f"{manifest.get('scorer')!r} wrote {list(attributes)}); choose one of them as the "
            "conditioning attribute or rescore with a scorer that has it"
        )
    shards = []
    for index, entry in enumerate(field("shards", list)):
        where = f"{manifest_path}: field 'shards[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ScoredDataError(f"{where}.path' missing or not a string")
        num_records = entry.get("num_records")
        if not isinstance(num_records, int) or num_records < 0:
            raise ScoredDataError(f"{where}.num_records' missing or not a count")
        shards.append(ScoredShard(_join(directory, entry["path"]), num_records))
    return ScoredCorpus(
        directory=directory,
        scorer=str(manifest.get("scorer", "")),
        attributes=attributes,
        text_field=str(manifest.get("text_field", "text")),
        shards=tuple(shards),
        segment=str(manifest.get("segment", "")),
    )


def iter_scored_records(
    path: str,
    *,
    attribute: str | None,
    text_field: str = "text",
    expected_records: int | None = None,
) -> Iterator[tuple[str, float, str]]:
    """(text, score, key) for each line of one scored shard, validating every record.

    attribute=None reads texts and keys only (score NaN), e.g. to train a vocabulary.
    """
    for _, _, text, score, key in _checked_records(path, attribute, text_field, expected_records):
        yield text, score, key


def _checked_records(
    path: str, attribute: str | None, text_field: str, expected_records: int | None
) -> Iterator[tuple[str, dict[str, Any], str, float, str]]:
    """(where, record, text, score, key) per line: the shared core of the two readers."""
    if not fileio.exists(path):
        raise ScoredDataError(f"{path}: scored shard listed in the manifest does not exist")
    count = 0
    for line_number, record in _shard_lines(path):
        where = f"{path}:{line_number}"
        text, score, key = checked_fields(record, attribute, text_field, where)
        count += 1
        yield where, record, text, score, key
    if expected_records is not None and count != expected_records:
        raise ScoredDataError(
            f"{path}: holds {count} records but the manifest lists num_records="
            f"{expected_records}: the shard was truncated or rewritten after scoring"
        )


def checked_fields(
    record: dict[str, Any], attribute: str | None, text_field: str, where: str
) -> tuple[str, float, str]:
    """(text, score, key) of one scored record; `where` ("path:line") heads every error."""
    try:
        text = get_field(record, text_field)
    except KeyError:
        raise ScoredDataError(f"{where}: field {text_field!r} missing") from None
    if not isinstance(text, str):
        raise ScoredDataError(f"{where}: field {text_field!r} is not a string")
    score = math.nan if attribute is None else _score(record, attribute, where)
    doc_id = record.get("id")
    key = stable_doc_key(text) if doc_id is None else str(doc_id)
    return text, float(score), key


def segment_fields(
    record: dict[str, Any], attribute: str, text: str, where: str
) -> tuple[list[int], list[float]]:
    """A record's segment ends and scores, checked against its text and each other."""
    ends = record.get("segment_ends")
    problem = check_ends(ends, len(text))
    if problem:
        raise ScoredDataError(f"{where}: field 'segment_ends' {problem}")
    scores = (record.get("segment_scores") or {}).get(attribute)
    if not isinstance(scores, list) or len(scores) != len(ends):
        raise ScoredDataError(
            f"{where}: field 'segment_scores.{attribute}' is not a list of {len(ends)} scores"
        )
    if any(
        isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s)
        for s in scores
    ):
        raise ScoredDataError(f"{where}: field 'segment_scores.{attribute}' holds a non-number")
    return ends, [float(s) for s in scores]


def iter_segmented_records(
    path: str, *, attribute: str, text_field: str = "text", expected_records: int | None = None
) -> Iterator[tuple[str, float, str, list[int], list[float]]]:
    """(text, score, key, segment ends, segment scores) for each line of one scored shard."""
    for where, record, text, score, key in _checked_records(
        path, attribute, text_field, expected_records
    ):
        ends, scores = segment_fields(record, attribute, text, where)
        yield text, score, key, ends, scores


def _shard_lines(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """fileio.read_jsonl, its errors raised as ScoredDataError (what the data layer raises)."""
    try:
        yield from fileio.read_jsonl(path, allow_empty=True)
    except fileio.FileFormatError as e:
        raise ScoredDataError(str(e)) from None


def _score(record: dict[str, Any], attribute: str, where: str) -> float:
    scores = record.get("scores")
    if not isinstance(scores, dict):
        raise ScoredDataError(f"{where}: field 'scores' missing or not an object")
    if attribute not in scores:
        raise ScoredDataError(
            f"{where}: field 'scores.{attribute}' missing (scores has {sorted(scores)})"
        )
    score = scores[attribute]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise ScoredDataError(f"{where}: field 'scores.{attribute}' is not a number")
    if not math.isfinite(score):
        raise ScoredDataError(f"{where}: field 'scores.{attribute}' is {score}")
    return float(score)


def in_validation(key: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic held-out draw on the doc key, independent of the augmentation draw."""
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(f"split:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64
