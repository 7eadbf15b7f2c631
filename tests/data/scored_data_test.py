"""Reading scored shards in plain Python: the held-out draw, and no TensorFlow to load."""

import subprocess
import sys

import pytest

from toxjax.data.scored_data import in_validation


def test_the_validation_draw_is_deterministic_seeded_and_near_its_fraction():
    keys = [f"doc-{i}" for i in range(4000)]
    drawn = [key for key in keys if in_validation(key, 0.1)]
    assert drawn == [key for key in keys if in_validation(key, 0.1, seed=0)]
    assert 0.08 < len(drawn) / len(keys) < 0.12
    assert drawn != [key for key in keys if in_validation(key, 0.1, seed=1)]
    assert not any(in_validation(key, 0.0) for key in keys)


@pytest.mark.parametrize("module", ["toxjax.data.scored_data", "toxjax.data.vocab_main"])
def test_reading_scored_shards_loads_no_tensorflow(module):
    """The vocabulary command reads a corpus without TensorFlow's 4 s import."""
    loaded = "sorted(m for m in ('tensorflow', 'seqio') if m in sys.modules)"
    code = f"import sys, {module}; print({loaded})"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
