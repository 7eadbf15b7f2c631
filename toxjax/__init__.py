"""toxjax: pretraining less toxic language models by conditioning on toxicity signals."""

import gc

__version__ = "0.1.0"

# Importing TensorFlow, SeqIO and JAX, then tracing JAX programs, allocate millions of objects
# that live as long as the process. At CPython's default thresholds (700, 10, 10) the collector
# rescans them again and again: 3.2 s of a tiny-config train_and_eval run, 2.5 s of it in 9 full
# collections; at (10000, 20, 20), 1.1 s and no full collection. Every toxjax command imports
# this package first. A process that chose its own thresholds keeps them.
if gc.get_threshold() == (700, 10, 10):
    gc.set_threshold(10_000, 20, 20)
