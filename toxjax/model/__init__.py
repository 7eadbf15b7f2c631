"""Model: the Flax decoder, sampling, sharding, FLOPs and memory."""
