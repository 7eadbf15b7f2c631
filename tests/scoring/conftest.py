"""Shared fixtures: a tiny random Detoxify checkpoint and the real `Detoxify` class on it."""

from __future__ import annotations

import pytest
from detoxify import detoxify as detoxify_module

from toxjax.testing import detoxify_checkpoint


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory) -> str:
    return detoxify_checkpoint.build_tiny_detoxify_checkpoint(
        str(tmp_path_factory.mktemp("detoxify"))
    )


@pytest.fixture(scope="session")
def reference(checkpoint_path) -> detoxify_module.Detoxify:
    return detoxify_module.Detoxify(checkpoint=checkpoint_path)
