"""Inference: the KV-cache sampler, batched log-likelihood and the request types every
evaluation and the interop adapters are written against."""
