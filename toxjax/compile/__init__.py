"""Ahead-of-time compilation of toxjax's steps for TPU slices, on a host without a TPU."""
