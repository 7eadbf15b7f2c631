"""transformers checkpoint directories: config.json plus (sharded) safetensors, read and written.

Writing streams tensors into shards of at most `max_shard_bytes` (one shard in memory at a time)
named as `save_pretrained` names them: model.safetensors alone, or
model-00001-of-0000N.safetensors with model.safetensors.index.json. Reading maps local files
(safetensors' memory-mapped slices: a part of a fused tensor is read without the rest) and reads
gs:// shards whole, one at a time. Everything goes through numpy (bfloat16 via ml_dtypes), so
neither torch nor an accelerator is involved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from absl import logging

from toxjax import fileio

CONFIG = "config.json"
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 2 << 30
# Buffers some checkpoints carry that are not parameters (old GPT-2 masks, rotary caches).
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")


def _safetensors() -> Any:
    try:
        import safetensors.numpy
    except ImportError as error:  # an optional dependency: pip install toxjax[interop]
        raise ImportError(
            "transformers checkpoints need the safetensors package: pip install 'toxjax[interop]'"
        ) from error
    return safetensors


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped in order into shards of at most max_shard_bytes (a bigger tensor
    gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def shard_file(index: int, count: int) -> str:
    return SINGLE if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def write_checkpoint(
    directory: str,
    config: Mapping[str, Any],
    tensors: Iterable[tuple[str, np.ndarray]],
    sizes: Mapping[str, int],
    *,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> list[str]:
    """config.json and the tensors (produced in `sizes` order, `sizes` giving their bytes);
    returns the safetensors file names."""
    st = _safetensors()
    fileio.make_dirs(directory)
    shards = plan_shards(sizes, max_shard_bytes)
    files = [shard_file(i, len(shards)) for i in range(len(shards))]
    iterator = iter(tensors)
    weight_map = {}
    for names, file in zip(shards, files, strict=True):
        batch = {}
        for expected in names:
            name, array = next(iterator)
            if name != expected:
                raise AssertionError(f"tensor {name!r} came where {expected!r} was planned")
            batch[name] = np.ascontiguousarray(array)
            weight_map[name] = file
        data = st.numpy.save(batch, metadata={"format": "pt"})
        fileio.write_atomic(fileio.join(directory, file), data)
        logging.info("Wrote %s (%d tensors, %.1f MB)", file, len(batch), len(data) / 1e6)
    if len(files) > 1:
        index = {"metadata": {"total_size": int(sum(sizes.values()))}, "weight_map": weight_map}
        fileio.write_atomic(fileio.join(directory, INDEX), json.dumps(index, indent=2).encode())
    text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    fileio.write_atomic(fileio.join(directory, CONFIG), text.encode())
    return files


def read_config(directory: str) -> dict[str, Any] | None:
    """The directory's config.json, or None when it has none (not a transformers model)."""
    path = fileio.join(directory, CONFIG)
    if not fileio.exists(path):
        return None
    return dict(fileio.read_json(path))


def is_buffer(name: str) -> bool:
    return name.endswith(_BUFFER_SUFFIXES)


class Checkpoint:
    """The tensors of a transformers directory: names, shapes, and (parts of) arrays."""

    def __init__(self, directory: str):
        self.directory = directory
        config = read_config(directory)
        if config is None:
            raise FileNotFoundError(f"{directory}: no {CONFIG} (not a transformers model)")
        self.config = config
        index_path = fileio.join(directory, INDEX)
        if fileio.exists(index_path):
            files = sorted(set(fileio.read_json(index_path)["weight_map"].values()))
        elif fileio.exists(fileio.join(directory, SINGLE)):
            files = [SINGLE]
        else:
            raise FileNotFoundError(
                f"{directory}: no {SINGLE} or {INDEX}; only safetensors checkpoints are read "
                "(re-save a PyTorch .bin checkpoint with save_pretrained(safe_serialization=True))"
            )
        self._handles: dict[str, Any] = {}
        self._loaded: tuple[str, dict[str, np.ndarray]] | None = None
        self.files: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}
        for file in files:
            self._read_header(file)

    def _read_header(self, file: str) -> None:
        path = fileio.join(self.directory, file)
        if fileio.is_url(path):
            with fileio.open_read(path) as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length))
        else:
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            self.files[name] = file
            self.shapes[name] = tuple(int(d) for d in entry["shape"])
            self.dtypes[name] = entry["dtype"]

    def _local(self, file: str) -> Any:
        if file not in self._handles:
            from safetensors import safe_open

            _safetensors()
            self._handles[file] = safe_open(
                fileio.join(self.directory, file), framework="numpy"
            ).__enter__()
        return self._handles[file]

    def read(self, name: str, part: int = 0, parts: int = 1) -> np.ndarray:
        """Tensor `name`, or chunk `part` of `parts` equal chunks along its last axis."""
        file = self.files[name]
        width = self.shapes[name][-1]
        start, stop = part * width // parts, (part + 1) * width // parts
        path = fileio.join(self.directory, file)
        if not fileio.is_url(path):
            sliced = self._local(file).get_slice(name)
            if parts == 1:
                return np.asarray(sliced[...])
            return np.asarray(
                sliced[(slice(None),) * (len(self.shapes[name]) - 1) + (slice(start, stop),)]
            )
        if self._loaded is None or self._loaded[0] != file:  # one remote shard held at a time
            self._loaded = (file, _safetensors().numpy.load(fileio.read_bytes(path)))
        array = self._loaded[1][name]
        return array if parts == 1 else array[..., start:stop]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()
        self._loaded = None


def tensor_bytes(shape: tuple[int, ...], dtype: Any) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize
