"""The output directory of a scoring run: manifest, shard files and what a rerun resumes from.

    <output_dir>/manifest.json              the run's header + its finished shards (+ summary)
    <output_dir>/shards/scored-NNNNN.jsonl  one scored record per line
    <output_dir>/shards/scored-NNNNN.jsonl.index.npy  its line index (line_index.py)
    <output_dir>/summary.json, histogram.png

The manifest is rewritten atomically after every shard, so it always names only shards whose
files are complete; a Beam worker also leaves a small note next to each shard it finishes, so
the shards of a job that died before writing its manifest are adopted rather than rescored
(the processes of a multi-process JAX run other than process 0 leave the same notes). A shard's
index and note share its name's prefix, so removing `scored-*` removes them with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from absl import logging

from toxjax import fileio

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUMMARY = "summary.json"
HISTOGRAM = "histogram.png"
SHARDS_DIR = "shards"
RESULT_SUFFIX = ".result.json"  # a Beam worker's record of one finished shard


class OutputConflictError(ValueError):
    """The output directory holds a different run (other scorer, input or sharding)."""


def json_bytes(value: Any, indent: int | None = None) -> bytes:
    """One JSON value and a newline, UTF-8 (non-ASCII text kept readable)."""
    return (json.dumps(value, ensure_ascii=False, indent=indent) + "\n").encode("utf-8")


def shard_path(index: int) -> str:
    """Shard file path relative to the output directory."""
    return f"{SHARDS_DIR}/scored-{index:05d}.jsonl"


def load_manifest(output_dir: str) -> dict:
    path = fileio.join(output_dir, MANIFEST)
    if not fileio.exists(path):
        raise FileNotFoundError(f"no {MANIFEST} in {output_dir}: nothing was scored there")
    return json.loads(fileio.read_bytes(path))


def header_digest(header: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def write_manifest(
    output_dir: str,
    header: Mapping[str, Any],
    entries: Mapping[int, dict],
    summary: dict | None = None,
) -> dict:
    manifest = {
        **header,
        "complete": len(entries) == header["num_shards"],
        "shards": [entries[index] for index in sorted(entries)],
        "summary": summary,
    }
    fileio.write_atomic(fileio.join(output_dir, MANIFEST), json_bytes(manifest, indent=1))
    return manifest


def _shard_is_intact(output_dir: str, entry: Mapping[str, Any]) -> bool:
    path = fileio.join(output_dir, entry["path"])
    return fileio.exists(path) and fileio.size(path) == entry["num_bytes"]


def complete_manifest(output_dir: str, header: Mapping[str, Any]) -> dict | None:
    """The manifest of a complete output of this very run (same header, every shard intact),
    found by reading only, or None: then the run must lock the directory and prepare it."""
    if not fileio.exists(fileio.join(output_dir, MANIFEST)):
        return None
    manifest = load_manifest(output_dir)
    same_run = all(manifest.get(key) == value for key, value in header.items())
    if not (same_run and manifest.get("complete")):
        return None
    intact = all(_shard_is_intact(output_dir, entry) for entry in manifest["shards"])
    return manifest if intact else None


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 120 else text[:117] + "..."


def prepare_output(output_dir: str, header: dict[str, Any], *, overwrite: bool) -> dict[int, dict]:
    """Checks the directory holds this run (or nothing) and returns its finished shards.

    Leftover temporary files of a killed run are deleted; shards a Beam worker finished but
    no manifest lists yet (the job died before its last step) are adopted.
    """
    shards_dir = fileio.join(output_dir, SHARDS_DIR)
    if overwrite:
        for name in (MANIFEST, SUMMARY, HISTOGRAM):
            if fileio.exists(fileio.join(output_dir, name)):
                fileio.remove(fileio.join(output_dir, name))
        for name in fileio.list_dir(shards_dir):
            if name.startswith("scored-") or fileio.TMP_MARKER in name:
                fileio.remove(fileio.join(shards_dir, name))
    existing = (
        load_manifest(output_dir) if fileio.exists(fileio.join(output_dir, MANIFEST)) else None
    )
    if existing is None and any(n.startswith("scored-") for n in fileio.list_dir(shards_dir)):
        raise OutputConflictError(
            f"{shards_dir} holds shard files but {output_dir} has no {MANIFEST}: it is not a "
            "toxjax scoring output, or a damaged one; pass --overwrite to replace it"
        )
    if existing is not None:
        changed = [key for key in header if existing.get(key) != header[key]]
        if changed:
            details = "; ".join(
                f"{key}: {_short(existing.get(key))} -> {_short(header[key])}" for key in changed
            )
            mixed = (
                " Scores of two scorers, or of two backends of one model (torch, jax), are "
                "never mixed in one output."
                if "scorer" in changed
                else ""
            )
            raise OutputConflictError(
                f"{output_dir} holds another scoring run ({details}).{mixed} Use a new "
                "output_dir, or pass --overwrite to discard the existing output"
            )
    fileio.make_dirs(shards_dir)
    for directory in (output_dir, shards_dir):
        for name in fileio.list_dir(directory):
            if name.startswith(".") and fileio.TMP_MARKER in name:
                fileio.remove(fileio.join(directory, name))
    finished: dict[int, dict] = {}
    for entry in existing["shards"] if existing else []:
        if _shard_is_intact(output_dir, entry):
            finished[entry["index"]] = entry
        else:
            logging.warning("%s is missing or damaged; it will be scored again", entry["path"])
    for index, entry in shard_results(output_dir, header).items():
        finished.setdefault(index, entry)
    if existing is None or [e["index"] for e in existing["shards"]] != sorted(finished):
        write_manifest(output_dir, header, finished)
    return finished


def write_shard_result(output_dir: str, header: Mapping[str, Any], entry: dict) -> None:
    """A Beam worker's durable note that a shard is done, adopted by prepare_output."""
    path = fileio.join(output_dir, entry["path"] + RESULT_SUFFIX)
    fileio.write_atomic(path, json_bytes({"header_digest": header_digest(header), "entry": entry}))


def shard_results(output_dir: str, header: Mapping[str, Any]) -> dict[int, dict]:
    """The entries of the shards that notes (write_shard_result) of this very run name and
    whose files are intact: what a Beam worker or another JAX process finished."""
    shards_dir = fileio.join(output_dir, SHARDS_DIR)
    digest = header_digest(header)
    entries: dict[int, dict] = {}
    for name in sorted(fileio.list_dir(shards_dir)):
        if name.endswith(RESULT_SUFFIX):
            result = json.loads(fileio.read_bytes(fileio.join(shards_dir, name)))
            entry = result["entry"]
            if result["header_digest"] == digest and _shard_is_intact(output_dir, entry):
                entries.setdefault(entry["index"], entry)
    return entries


def remove_shard_results(output_dir: str) -> None:
    """Drops the workers' notes once the complete manifest lists every shard."""
    shards_dir = fileio.join(output_dir, SHARDS_DIR)
    for name in fileio.list_dir(shards_dir):
        if name.endswith(RESULT_SUFFIX):
            fileio.remove(fileio.join(shards_dir, name))
