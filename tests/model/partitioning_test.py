"""Tests of mesh creation, logical rules and sharded initialisation on 8 CPU devices."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from toxjax.configs import default
from toxjax.model import decoder, partitioning


def mesh_config(ici: dict, dcn: dict | None = None) -> dict:
    return {"ici": ici, "dcn": dcn or {"data": -1, "fsdp": 1, "tensor": 1}}


@pytest.fixture(scope="module")
def rules():
    return partitioning.logical_rules(default.get_config())


def test_create_mesh_fills_minus_one():
    assert jax.device_count() == 8
    mesh = partitioning.create_mesh(mesh_config({"data": 2, "fsdp": -1, "tensor": 2}))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    default_mesh = partitioning.create_mesh(default.get_config().mesh)
    assert dict(default_mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert dict(partitioning.create_mesh(mesh_config({"fsdp": 4, "tensor": 2})).shape) == {
        "data": 1,
        "fsdp": 4,
        "tensor": 2,
    }


@pytest.mark.parametrize(
    ("ici", "message"),
    [
        ({"data": 3, "fsdp": -1, "tensor": 1}, r"3 does not divide 8"),
        ({"data": 2, "fsdp": 2, "tensor": 1}, r"multiply to 4, but there are 8 devices"),
        ({"data": -1, "fsdp": -1, "tensor": 1}, r"at most one axis may be -1"),
        ({"data": 0, "fsdp": -1, "tensor": 1}, r"positive integer or -1"),
        ({"data": -1, "sequence": 2}, r"unknown mesh axes \['sequence'\]"),
    ],
)
def test_create_mesh_errors_name_sizes_and_device_count(ici, message):
    with pytest.raises(ValueError, match=message):
        partitioning.create_mesh(mesh_config(ici))


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """Enough of a device for mesh_utils: two slices of four CPU-like chips."""

    id: int
    slice_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"
    process_index: int = 0


def test_multislice_puts_dcn_axis_across_slices():
    devices = [FakeDevice(i, slice_index=i // 4) for i in range(8)]
    assert partitioning.num_slices(devices) == 2
    array = partitioning.create_device_array(
        mesh_config({"data": 1, "fsdp": -1, "tensor": 2}, {"data": -1, "fsdp": 1, "tensor": 1}),
        devices,
    )
    assert array.shape == (2, 2, 2)
    for data_index in range(2):  # each data-parallel replica lives inside one slice
        assert {d.slice_index for d in array[data_index].flat} == {data_index}
    with pytest.raises(ValueError, match=r"mesh.dcn .*fill 2 slices: 3 does not divide 2"):
        partitioning.create_device_array(
            mesh_config({"data": -1}, {"data": 3, "fsdp": -1, "tensor": 1}), devices
        )


def test_logical_rules_and_unknown_axes(rules):
    assert ("embed", "fsdp") in rules
    assert ("activation_batch", ("data", "fsdp")) in rules
    config = default.get_config()
    config.logical_axis_rules = [("embed", "fsdpp")]
    with pytest.raises(ValueError, match=r"'embed'.*'fsdpp'"):
        partitioning.logical_rules(config)
    tree = {"a": P("embed", "mlp"), "b": {"c": P("layers", "embd")}}
    with pytest.raises(ValueError, match=r"\['b'\]\['c'\]: \['embd'\]"):
        partitioning.check_logical_axes(tree, rules)
    partitioning.check_logical_axes({"a": P("embed", None)}, rules)  # known names pass


def test_sharded_init_really_splits_parameters(rules):
    mesh = partitioning.create_mesh(mesh_config({"data": 2, "fsdp": 2, "tensor": 2}))
    cfg = decoder.ModelConfig(
        num_layers=2, d_model=32, num_heads=4, mlp_dim=64, vocab_size=64, max_len=16
    )
    model = decoder.Decoder(cfg)
    tokens = jnp.zeros((4, 8), jnp.int32)
    params, shardings = partitioning.sharded_init(
        lambda key: model.init({"params": key}, tokens)["params"], mesh, rules, jax.random.key(0)
    )
    embedding = params["token_embedding"]
    assert embedding.sharding.spec == P("tensor", "fsdp")
    assert {s.data.shape for s in embedding.addressable_shards} == {(32, 16)}
    query = params["layers"]["attention"]["query"]["kernel"]
    assert query.shape == (2, 32, 4, 8)
    assert query.sharding.spec == P(None, "fsdp", "tensor", None)
    assert {s.data.shape for s in query.addressable_shards} == {(2, 16, 2, 8)}
    wo = params["layers"]["mlp"]["wo"]["kernel"]
    assert {s.data.shape for s in wo.addressable_shards} == {(2, 32, 16)}
    scale = params["final_norm"]["scale"]
    assert scale.sharding.is_fully_replicated and bool(jnp.all(scale == 1.0))
    assert shardings["token_embedding"] == embedding.sharding
    # Values are a real init: kernels ~ N(0, 0.02), biases zero.
    assert 0.01 < float(jnp.std(embedding)) < 0.03
    assert not bool(jnp.any(params["layers"]["mlp"]["wi"]["bias"]))

    # The sharded forward pass matches an unsharded one.
    batch = jax.device_put(
        jax.random.randint(jax.random.key(1), (4, 8), 0, 64),
        partitioning.batch_sharding(mesh, rules),
    )
    apply = partitioning.PartitionedFunction(
        lambda p, t: model.apply({"params": p}, t),
        mesh,
        rules,
        in_shardings=(shardings, partitioning.batch_sharding(mesh, rules)),
    )
    sharded_logits = apply(params, batch)
    assert sharded_logits.sharding.spec == P(("data", "fsdp"), None, "tensor")
    local = jax.device_get(params)
    np.testing.assert_allclose(
        sharded_logits,
        jax.jit(lambda p, t: model.apply({"params": p}, t))(local, np.asarray(batch)),
        atol=2e-2,  # bfloat16 compute, different reduction order
    )


def test_partitioned_function_enters_mesh_and_rules_and_donates(rules):
    mesh = partitioning.create_mesh(mesh_config({"data": 4, "fsdp": 2, "tensor": 1}))
    seen_rules = []

    def step(x):
        seen_rules.append(nn.get_logical_axis_rules())
        return nn.with_logical_constraint(x * 2.0, ("activation_batch", "activation_embed"))

    out = partitioning.PartitionedFunction(step, mesh, rules)(
        jnp.ones((16, 4))
    )  # input on one device
    assert seen_rules == [rules]  # traced once, under the rules
    assert nn.get_logical_axis_rules() == ()  # and left them afterwards
    assert out.sharding.spec[0] == ("data", "fsdp")  # the constraint took effect
    assert {s.data.shape for s in out.addressable_shards} == {(2, 4)}
    np.testing.assert_array_equal(out, 2.0)

    donating = partitioning.PartitionedFunction(step, mesh, rules, donate_argnums=(0,))
    donated = donating(out)
    assert out.is_deleted()
    np.testing.assert_array_equal(donated, 4.0)


def test_abstract_mesh_shardings_and_shard_shapes(rules):
    mesh = partitioning.create_abstract_mesh({"data": -1, "fsdp": 256, "tensor": 4}, 2048)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 256, "tensor": 4}
    specs = {"kernel": P("embed", "mlp"), "bias": P("mlp"), "odd": P("embed")}
    shardings = partitioning.logical_shardings(specs, mesh, rules)
    assert shardings["kernel"].spec == P("fsdp", "tensor")
    assert partitioning.shard_shape((2048, 8192), shardings["kernel"]) == (8, 2048)
    assert partitioning.shard_shape((8192,), shardings["bias"]) == (2048,)
    assert partitioning.shard_shape((1000,), shardings["odd"]) == (4,)  # ceil(1000 / 256)
    abstract = {
        "kernel": jax.ShapeDtypeStruct((2048, 8192), jnp.float32),
        "bias": jax.ShapeDtypeStruct((8192,), jnp.float32),
        "odd": jax.ShapeDtypeStruct((1000,), jnp.float32),
    }
    with pytest.raises(ValueError, match=r"\['odd'\] \(1000,\)"):
        partitioning.check_divisible(abstract, shardings)
    with pytest.raises(ValueError, match="give num_devices"):
        partitioning.create_abstract_mesh({"data": -1, "fsdp": 2, "tensor": 1})


def test_abstract_params_shard_params_and_batch_shards(rules):
    mesh = partitioning.create_mesh(mesh_config({"data": 2, "fsdp": 2, "tensor": 2}))
    cfg = decoder.ModelConfig(
        num_layers=1, d_model=32, num_heads=4, mlp_dim=64, vocab_size=64, max_len=16
    )
    abstract = partitioning.abstract_params(cfg, mesh, rules)
    embedding = abstract["token_embedding"]
    assert isinstance(embedding, jax.ShapeDtypeStruct) and embedding.shape == (64, 32)
    assert embedding.sharding.spec == P("tensor", "fsdp")
    assert partitioning.batch_shards(mesh, rules) == 4  # activation_batch -> (data, fsdp)

    params = decoder.Decoder(cfg).init({"params": jax.random.key(0)}, jnp.zeros((1, 1), jnp.int32))[
        "params"
    ]
    placed, shardings = partitioning.shard_params(params, cfg, mesh, rules)
    assert placed["token_embedding"].sharding == shardings["token_embedding"]
    assert shardings == partitioning.param_shardings(cfg, mesh, rules)
    again, _ = partitioning.shard_params(placed, cfg, mesh, rules)
    assert again["token_embedding"] is placed["token_embedding"]  # already in place: no copy

    other = dataclasses.replace(cfg, use_bias=not cfg.use_bias)  # other param tree
    with pytest.raises(ValueError, match="params do not match config.model"):
        partitioning.shard_params(params, other, mesh, rules)


def test_abstract_params_traces_the_model_once_per_config_mesh_and_rules(rules, monkeypatch):
    mesh = partitioning.create_mesh(mesh_config({"data": 4, "fsdp": 2, "tensor": 1}))
    cfg = decoder.ModelConfig(
        num_layers=1, d_model=16, num_heads=2, num_kv_heads=2, mlp_dim=32, vocab_size=48, max_len=8
    )
    traces = []
    init = decoder.Decoder.init
    monkeypatch.setattr(decoder.Decoder, "init", lambda *a, **k: traces.append(1) or init(*a, **k))
    first = partitioning.abstract_params(cfg, mesh, rules)
    listed = [[name, list(axes) if isinstance(axes, tuple) else axes] for name, axes in rules]
    second = partitioning.abstract_params(cfg, mesh, listed)  # the same rules, as lists
    assert len(traces) == 1
    assert second == first and second is not first  # each caller gets its own tree
    second.pop("token_embedding")
    assert "token_embedding" in partitioning.abstract_params(cfg, mesh, rules)
    partitioning.abstract_params(dataclasses.replace(cfg, vocab_size=64), mesh, rules)
    assert len(traces) == 2  # another config is traced again
