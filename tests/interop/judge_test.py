"""The fluency judge: a toxjax run and its transformers export score continuations alike."""

import json

import numpy as np
import pytest

from toxjax.inference.requests import LoglikelihoodRequest
from toxjax.interop import export, judge
from toxjax.testing import tiny_run

pytest.importorskip("transformers")

REQUESTS = [
    LoglikelihoodRequest("The weather today", " is mild and dry.", truncate=True),
    LoglikelihoodRequest("Hello", " world", truncate=True),
    LoglikelihoodRequest("A longer prompt about the market ", "and its prices", truncate=True),
]


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_run.tiny_config("gpt")
    config.data.task = "toxjax_demo_base"
    tiny_run.write_run(workdir, config, step=2, seed=5)
    output = str(tmp_path_factory.mktemp("export"))
    export.export_run(workdir, output)
    return workdir, output


def test_a_run_and_its_transformers_export_give_the_same_log_likelihoods(run_and_export):
    workdir, output = run_and_export
    ours = judge.load_judge(workdir)(REQUESTS)
    theirs = judge.load_judge(output)(REQUESTS)
    assert isinstance(judge.load_judge(output), judge.TransformersJudge)
    assert [r.num_tokens for r in ours] == [r.num_tokens for r in theirs]
    # One token per byte; the context's trailing space moves to the continuation (the harness').
    assert [r.num_tokens for r in ours] == [17, 6, 15]
    np.testing.assert_allclose(
        [r.logprob for r in ours], [r.logprob for r in theirs], rtol=1e-4, atol=1e-3
    )


def test_a_directory_that_is_neither_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json there"):
        judge.load_judge(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="neither a toxjax run config"):
        judge.load_judge(str(tmp_path))
