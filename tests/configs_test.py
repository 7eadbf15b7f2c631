"""Tests of the size configs: they load, count what they claim and shard on their meshes."""

import ast
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from configs import gpt_1p3b, gpt_8p3b, gpt_126m, gpt_357m, tiny
from toxjax.model import decoder, flops, partitioning

REPO = pathlib.Path(__file__).resolve().parents[1]
# (module, expected parameter count, relative tolerance)
SIZES = [
    (gpt_126m, 126e6, 0.05),
    (gpt_357m, 357e6, 0.05),
    (gpt_1p3b, 1.3e9, 0.05),
    (gpt_8p3b, 8.3e9, 0.05),
    (tiny, 0.46e6, 0.1),
]


@pytest.mark.parametrize(("module", "expected", "tolerance"), SIZES, ids=lambda x: str(x))
def test_param_count_from_shapes_equals_analytic_and_size(module, expected, tolerance):
    config = module.get_config()
    model_config = decoder.ModelConfig.from_config(config.model)
    count = decoder.count_params(model_config)
    assert count == flops.param_count(model_config)
    assert abs(count - expected) <= tolerance * expected, count
    assert config.data.seq_len <= model_config.max_len


@pytest.mark.parametrize("module", [gpt_126m, gpt_357m, gpt_1p3b, gpt_8p3b])
def test_gpt_family_shape(module):
    config = module.get_config()
    model = config.model
    assert (model.positions, model.activation, model.norm) == ("learned", "gelu", "layernorm")
    assert model.tie_embeddings and model.use_bias
    assert model.vocab_size == 51200 and model.vocab_size >= 50257  # padded GPT-2 BPE
    assert config.data.seq_len == model.max_len == 2048
    assert model.d_model % model.num_heads == 0 and model.mlp_dim == 4 * model.d_model
    assert config.mesh.ici.fsdp == -1 and model.dtype == "bfloat16"
    assert model.remat_policy in decoder.REMAT_POLICIES
    # Every parameter's logical names have rules, and shard evenly on a 256-chip FSDP mesh.
    mesh = partitioning.create_abstract_mesh({"data": 1, "fsdp": 256, "tensor": 1})
    tokens = jax.ShapeDtypeStruct((1, 1), "int32")
    boxed = jax.eval_shape(
        lambda key: decoder.Decoder(decoder.ModelConfig.from_config(model)).init(
            {"params": key}, tokens
        )["params"],
        jax.random.key(0),
    )
    rules = partitioning.logical_rules(config)
    shardings = partitioning.abstract_shardings(boxed, mesh, rules)
    partitioning.check_divisible(nn.unbox(boxed), shardings)


def test_paper_sizes():
    assert (gpt_1p3b.get_config().model.num_layers, gpt_1p3b.get_config().model.d_model) == (
        24,
        2048,
    )
    big = gpt_8p3b.get_config().model
    assert (big.num_layers, big.d_model, big.num_heads) == (72, 3072, 32)


def test_tiny_fits_the_demo_task_and_test_devices():
    config = tiny.get_config()
    assert config.data.task == "toxjax_demo_inst"
    assert config.model.vocab_size >= 259  # seqio.ByteVocabulary
    assert config.model.num_layers == 2 and 64 <= config.model.d_model <= 128
    assert config.data.global_batch_size % 8 == 0
    partitioning.create_mesh(config.mesh)  # the default mesh fits the 8 test devices


def test_every_default_field_is_commented():
    """configs/default.py is the schema: each field assignment carries a comment."""
    source = (REPO / "configs" / "default.py").read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    get_config = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "get_config"
    )
    fields = 0
    for node in ast.walk(get_config):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            fields += 1
            line = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip()
            assert "#" in line or above.startswith("#"), f"uncommented field: {line.strip()}"
    assert fields > 40


def test_config_script_prints_its_parameter_count():
    result = subprocess.run(
        [sys.executable, str(REPO / "configs" / "gpt_126m.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "parameters: 125,950,464" in result.stdout
