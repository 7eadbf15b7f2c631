"""Detoxify in JAX: the converted Flax classifier, batch-sharded over a device mesh.

Same tokenizer, windows and aggregation as the torch `DetoxifyScorer` (both are
`WindowedScorer`s); only the forward pass differs. Windows are grouped into a few length
buckets, and each bucket's batch has a static shape (rows a power of two, a multiple of the
data-parallel devices), so a corpus of any length mix compiles a handful of programs.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from toxjax.scoring import detoxify_convert, scorers

DEFAULT_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512)
BATCH_AXES = ("data", "fsdp")  # the mesh axes a batch is split over (partitioning.MESH_AXES)


def released_checkpoint(model_type: str) -> str:
    """Local path of a released Detoxify checkpoint, downloaded once to torch's hub cache
    (where `Detoxify(model_type)` keeps it too)."""
    import torch
    from detoxify import detoxify as detoxify_module

    url = detoxify_module.MODEL_URLS[model_type]
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(url, path, progress=False)
    return path


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise ValueError(f"a window of {length} tokens exceeds the largest bucket {buckets[-1]}")


class DetoxifyJaxScorer(scorers.WindowedScorer):
    """A Detoxify checkpoint scored by its Flax port, on whatever devices JAX sees."""

    backend = "jax"

    def __init__(
        self,
        model: str = "original",
        *,
        batch_tokens: int = 16384,
        max_length: int = 512,
        aggregate: str = "max",
        stride: int = 0,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        mesh: Any = None,
        progress: bool = False,
        huggingface_config_path: str | None = None,
        trust_pickle: bool = False,
    ) -> None:
        """Loads (converting and caching on first use) a Detoxify checkpoint.

        Args:
          model: a Detoxify model type ("original", "unbiased", ...) or a local .ckpt path.
          batch_tokens: padded tokens per forward pass; a bucket of length L runs
            batch_tokens // L rows (fewer when fewer windows wait).
          max_length, aggregate, stride: as for the torch DetoxifyScorer.
          buckets: padded window lengths; max_length is always one of them.
          mesh: a jax Mesh whose "data"/"fsdp" axes split the batch; default: every local
            device on one "data" axis.
          progress: show a tqdm bar over batches.
          huggingface_config_path: local folder with the transformers config and tokenizer.
          trust_pickle: load a checkpoint that a weights-only torch.load refuses.
        """
        import transformers

        super().__init__(
            batch_size=max(1, batch_tokens // max_length),
            max_length=max_length,
            aggregate=aggregate,
            stride=stride,
        )
        self.batch_tokens = batch_tokens
        self.progress = progress
        self.version = importlib.metadata.version("detoxify")
        self.source = scorers.resolve_detoxify_model(model)
        try:
            checkpoint = self.source.checkpoint_path or released_checkpoint(self.source.model_type)
            converted = detoxify_convert.load_converted(
                checkpoint,
                huggingface_config_path=huggingface_config_path,
                trust_pickle=trust_pickle,
            )
            tokenizer_cls = getattr(transformers, converted.tokenizer_name)
            self.tokenizer = tokenizer_cls.from_pretrained(
                huggingface_config_path or converted.tokenizer_path
            )
        except detoxify_convert.ConversionError:
            raise
        except Exception as error:
            raise scorers.load_error(self.source, error) from error
        self.config = converted.config
        self.attributes = converted.class_names
        self._check_window(self.config.max_position_embeddings)
        self.buckets = tuple(sorted({b for b in buckets if b < max_length} | {max_length}))
        self.name = self._window_name(self.source.base_name)
        self._setup_devices(converted.params, mesh)

    def _setup_devices(self, params: dict[str, Any], mesh: Any) -> None:
        """Replicates the params over the mesh and compiles-on-demand one forward per shape."""
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from toxjax.scoring.encoders import SequenceClassifier

        if mesh is not None and any(
            d.process_index != jax.process_index() for d in mesh.devices.flat
        ):
            # Each host scores its own texts: a multi-host mesh would need global inputs.
            mesh = None
        if mesh is None:
            mesh = Mesh(np.asarray(jax.local_devices()), ("data",))
        batch_axes = tuple(a for a in mesh.axis_names if a in BATCH_AXES)
        self.mesh = mesh
        self.data_shards = math.prod(mesh.shape[a] for a in batch_axes)
        replicated = NamedSharding(mesh, PartitionSpec())
        self._batch_sharding = NamedSharding(mesh, PartitionSpec(batch_axes or None, None))
        self.params = jax.device_put(params, replicated)
        model = SequenceClassifier(self.config)

        def forward(params, input_ids, attention_mask, token_type_ids):
            # Full float32 matmuls: TPUs (one bfloat16 pass) and GPUs (TF32) would otherwise
            # drift from Detoxify's scores by ~1e-3 over 12 layers.
            with jax.default_matmul_precision("float32"):
                logits = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
            return jax.nn.sigmoid(logits)  # Detoxify's head: a sigmoid per label.

        self._forward = jax.jit(
            forward,
            in_shardings=(replicated, *(self._batch_sharding,) * 3),
            out_shardings=replicated,  # every host reads its scores whole
        )

    def batch_rows(self, bucket: int, waiting: int) -> int:
        """Rows of one batch: the token budget, or fewer when fewer windows wait, always a
        power of two times the data-parallel devices (few static shapes, even shards)."""
        shards = self.data_shards
        budget = max(shards, self.batch_tokens // bucket // shards * shards)
        needed = 1 << max(0, math.ceil(math.log2(max(waiting, 1))))
        return min(budget, shards * math.ceil(needed / shards))

    def batches(self, lengths: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """(bucket length, window indices) per forward pass, longest buckets first."""
        assigned = np.asarray([bucket_length(int(n), self.buckets) for n in lengths])
        plan = []
        for bucket in sorted(set(assigned.tolist()), reverse=True):
            members = np.flatnonzero(assigned == bucket)
            start = 0
            while start < len(members):
                rows = self.batch_rows(bucket, len(members) - start)
                plan.append((bucket, members[start : start + rows]))
                start += rows
        return plan

    def _pad(self, inputs: dict[str, list[list[int]]], rows: np.ndarray, shape: tuple[int, int]):
        """Padded int32 arrays of one batch; filler rows are all padding and are discarded."""
        pad_id = self.tokenizer.pad_token_id or 0
        arrays = {
            "input_ids": np.full(shape, pad_id, np.int32),
            "attention_mask": np.zeros(shape, np.int32),
            "token_type_ids": np.zeros(shape, np.int32),
        }
        for slot, row in enumerate(rows):
            for key, values in arrays.items():
                if key in inputs:
                    sequence = inputs[key][row]
                    values[slot, : len(sequence)] = sequence
        return arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"]

    def score_windows(self, inputs: dict[str, list[list[int]]]) -> np.ndarray:
        """Scores windows bucket by bucket; returns [num_windows, num_attributes]."""
        import jax

        lengths = np.asarray([len(ids) for ids in inputs["input_ids"]])
        scores = np.zeros((len(lengths), len(self.attributes)), np.float32)
        plan = self.batches(lengths)
        if self.progress:
            from tqdm.auto import tqdm

            plan = tqdm(plan, desc=f"scoring ({self.scorer_id})", unit="batch")
        pending = []  # dispatch every batch before reading any back: the devices stay busy
        for bucket, rows in plan:
            shape = (self.batch_rows(bucket, len(rows)), bucket)
            padded = self._pad(inputs, rows, shape)
            arrays = [jax.device_put(a, self._batch_sharding) for a in padded]
            pending.append((rows, self._forward(self.params, *arrays)))
        for rows, probabilities in pending:
            scores[rows] = np.asarray(probabilities)[: len(rows)]
        return scores
