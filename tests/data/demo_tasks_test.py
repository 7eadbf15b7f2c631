"""The demo task module end to end: registered on import, scored on first use, packed for an LM."""

import importlib
import json
import os

import ml_collections
import numpy as np
import pytest
import seqio

from toxjax.data import demo_tasks, tasks
from toxjax.data.conditioning import Strategy

DEMO_NAMES = [
    "toxjax_demo_base",
    "toxjax_demo_meda",
    "toxjax_demo_inst",
    "toxjax_demo_filter",
    "toxjax_demo_inst_mix",
]
LM_PACKED = seqio.LMFeatureConverter(pack=True)
MODEL_FEATURES = {
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_loss_weights",
    "decoder_segment_ids",
    "decoder_positions",
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A private TOXJAX_DATA_DIR for this module, so tests never touch ~/.cache."""
    directory = str(tmp_path_factory.mktemp("toxjax_data"))
    previous = os.environ.get(demo_tasks.DATA_DIR_ENV)
    os.environ[demo_tasks.DATA_DIR_ENV] = directory
    yield directory
    if previous is None:
        del os.environ[demo_tasks.DATA_DIR_ENV]
    else:
        os.environ[demo_tasks.DATA_DIR_ENV] = previous


@pytest.fixture(scope="module")
def demo(data_dir):
    """Demo tasks whose lazy source resolves under `data_dir` (re-registered after import)."""
    registered = demo_tasks.register_demo_tasks()
    yield registered
    demo_tasks.register_demo_tasks()  # leave fresh, unresolved demo tasks for other test modules


def test_import_registers_the_demo_family_cheaply_and_idempotently(data_dir):
    module = importlib.reload(demo_tasks)  # re-runs the import-time registration
    module = importlib.reload(module)  # and again: replaces, never duplicates
    for name in DEMO_NAMES:
        assert name in seqio.TaskRegistry.names() or name in seqio.MixtureRegistry.names()
    assert sorted(tasks.family_members("toxjax_demo")) == sorted(DEMO_NAMES)
    assert module.DEMO_TASKS == {
        "base": "toxjax_demo_base",
        "meda": "toxjax_demo_meda",
        "inst": "toxjax_demo_inst",
        "filter": "toxjax_demo_filter",
        "inst_mix": "toxjax_demo_inst_mix",
    }
    assert os.listdir(data_dir) == []  # nothing scored at import
    vocab = seqio.get_mixture_or_task("toxjax_demo_inst").output_features["targets"].vocabulary
    assert isinstance(vocab, seqio.ByteVocabulary)


def test_demo_is_scored_once_into_the_data_dir(demo, data_dir):
    directory = demo_tasks.demo_scored_dir()
    assert directory.startswith(os.path.join(data_dir, "demo"))
    manifest_path = os.path.join(directory, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    assert manifest["complete"] and manifest["input"] == "demo"
    assert manifest["scorer"].startswith("profanity_check@")
    modified = os.path.getmtime(manifest_path)
    assert demo_tasks.demo_scored_dir() == directory
    assert os.path.getmtime(manifest_path) == modified  # cached, not rescored


@pytest.mark.parametrize("strategy", ["base", "meda", "inst", "filter"])
def test_demo_task_text_is_the_conditioning_of_every_scored_record(demo, strategy):
    task = seqio.get_mixture_or_task(f"toxjax_demo_{strategy}")
    for split in ("validation",):  # train is the same code on 19x the data
        records = list(task.source.iter_split(split))
        expected = [demo_tasks.DEMO_FORMAT.condition(strategy, *record) for record in records]
        expected = sorted(text for text in expected if text is not None)
        ds = task.get_dataset(None, split=split, shuffle=False)
        actual = sorted(
            t.decode() for t in ds.map(lambda ex: ex["targets_pretokenized"]).as_numpy_iterator()
        )
        assert actual == expected
    if strategy == "filter":  # the demo's offensive documents score far above 0.5
        train = list(task.source.iter_split("train"))
        assert 0 < len(actual) < len(train)


def test_demo_splits_are_disjoint(demo):
    source = seqio.get_mixture_or_task("toxjax_demo_base").source
    train = {key for *_, key in source.iter_split("train")}
    validation = {key for *_, key in source.iter_split("validation")}
    assert not train & validation
    assert len(train | validation) == 4000
    assert 120 <= len(validation) <= 280  # 5% of 4000


@pytest.mark.parametrize("name", DEMO_NAMES)
def test_demo_tasks_pack_for_an_lm(demo, name):
    ds = seqio.get_dataset(
        name,
        task_feature_lengths={"targets": 512},
        feature_converter=LM_PACKED,
        dataset_split="train",
        shuffle=True,
        seed=0,
    )
    examples = list(ds.take(4).as_numpy_iterator())
    assert len(examples) == 4
    assert any(ex["decoder_segment_ids"].max() >= 2 for ex in examples)  # documents are packed
    for ex in examples:
        assert set(ex) == MODEL_FEATURES
        assert all(v.shape == (512,) and v.dtype == np.int32 for v in ex.values())
        weights = ex["decoder_loss_weights"]
        np.testing.assert_array_equal(weights, ex["decoder_target_tokens"] > 0)
        first = ex["decoder_target_tokens"][ex["decoder_segment_ids"] == 1]
        assert first[-1] == 1  # each document ends with EOS
        text = seqio.ByteVocabulary().decode(first.tolist())
        if name.startswith("toxjax_demo_meda"):
            assert text.startswith("toxicity: ")
        if name == "toxjax_demo_inst":
            assert text.startswith("The following text is ")


def test_host_shards_of_a_demo_task_partition_it(demo):
    def count(shard_info=None):
        ds = seqio.get_dataset(
            "toxjax_demo_base",
            task_feature_lengths={"targets": 64},
            feature_converter=seqio.LMFeatureConverter(pack=False),
            dataset_split="validation",
            shard_info=shard_info,
        )
        return sum(1 for _ in ds)

    halves = [count(seqio.ShardInfo(i, 2)) for i in range(2)]
    assert sum(halves) == count() and min(halves) > 0


def test_inference_prefix_of_registered_tasks(demo):
    assert tasks.inference_prefix("toxjax_demo_inst") == "The following text is non-toxic:\n"
    assert tasks.inference_prefix("toxjax_demo_inst_mix") == "The following text is non-toxic:\n"
    assert tasks.inference_prefix("toxjax_demo_meda") == "toxicity: 0.00\n"
    assert tasks.inference_prefix("toxjax_demo_filter") == ""
    assert tasks.conditioning_for("toxjax_demo_meda") == (Strategy.MEDA, demo_tasks.DEMO_FORMAT)
    with pytest.raises(ValueError, match="not a task or mixture registered by toxjax"):
        tasks.conditioning_for("no_such_task")


def test_a_task_module_is_imported_by_name_from_the_config(demo):
    config = ml_collections.ConfigDict({"data": {"task_modules": ("toxjax.data.demo_tasks",)}})
    assert tasks.import_task_modules(config) == ("toxjax.data.demo_tasks",)
    assert tasks.import_task_modules(ml_collections.ConfigDict({"data": {}})) == (
        tasks.DEFAULT_TASK_MODULES
    )


def test_resolve_conditioning_uses_the_task_s_unless_overridden(demo):
    assert tasks.resolve_conditioning("toxjax_demo_meda") == (Strategy.MEDA, demo_tasks.DEMO_FORMAT)
    assert tasks.resolve_conditioning("toxjax_demo_meda", "filter")[0] is Strategy.FILTER
    assert tasks.resolve_conditioning("not_a_toxjax_task")[0] is Strategy.BASE
