"""Shared evaluation plumbing: engine-answer checks, TFDS reading errors, strict JSON output."""

import math

import numpy as np
import pytest

from toxjax.inference import requests as req


def test_call_loglikelihood_checks_the_engine():
    asked = [req.LoglikelihoodRequest("a", " b"), req.LoglikelihoodRequest("c", " d")]
    good = [req.LoglikelihoodResult(-1.0, True, 1), req.LoglikelihoodResult(-2.5, False, 2)]
    assert req.call_loglikelihood(lambda r: good, asked, task="t") == good
    with pytest.raises(TypeError, match="t: loglikelihood_fn result 0 is tuple"):
        req.call_loglikelihood(lambda r: [(-1.0, True, 1)] * 2, asked, task="t")
    with pytest.raises(ValueError, match="result 1 has logprob nan"):
        req.call_loglikelihood(
            lambda r: [good[0], req.LoglikelihoodResult(math.nan, True, 1)], asked, task="t"
        )
    with pytest.raises(ValueError, match="scored 0 tokens for continuation ' d'"):
        req.call_loglikelihood(
            lambda r: [good[0], req.LoglikelihoodResult(-1.0, True, 0)], asked, task="t"
        )


def test_text_and_field_helpers_name_the_record():
    assert req.as_text(np.array(b"caf\xc3\xa9", dtype=object), source="s", record=0, field="f") == (
        "café"
    )
    with pytest.raises(ValueError, match="s: record 4: field 'f' is not UTF-8"):
        req.as_text(b"\xff", source="s", record=4, field="f")
    with pytest.raises(ValueError, match="s: line 9: field 'f' must be text, got int"):
        req.as_text(3, source="s", record="line 9", field="f")
    assert req.nested_field({"a": {"b": 2}}, "a.b", source="s", record=0) == 2
    with pytest.raises(ValueError, match="s: record 1: missing field 'a.c'"):
        req.nested_field({"a": {"b": 2}}, "a.c", source="s", record=1)


def test_unprepared_tfds_dataset_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build piqa"):
        next(req.iter_tfds_examples("piqa", "validation", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="limit must be >= 0"):
        next(req.iter_tfds_examples("piqa", "validation", limit=-1))
