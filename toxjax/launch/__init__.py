"""Launching runs on TPU VMs and GPU hosts."""
