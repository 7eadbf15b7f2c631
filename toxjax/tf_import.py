"""The one way toxjax imports TensorFlow: with every accelerator hidden from it.

TensorFlow only reads and preprocesses data here (tf.data, SeqIO, TFDS, gfile); JAX must own
the GPU and TPU memory. Call `import_tensorflow()` before the first TensorFlow op of a code
path; importing a toxjax module never changes TensorFlow's device setup by itself.
"""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType


@functools.cache
def import_tensorflow() -> ModuleType:
    """TensorFlow, with GPUs and TPUs invisible to it (a no-op after the first call)."""
    import tensorflow as tf

    for device_type in ("GPU", "TPU"):
        # RuntimeError: TF initialised its devices before this call (another library's
        # choice stands); ValueError: this TF build knows no such device type.
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.set_visible_devices([], device_type)
    return tf
