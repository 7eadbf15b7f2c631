"""Tests of the configs: they import as a package, count what they claim, shard on their meshes."""

import ast
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import pytest

from toxjax.configs import gpt_1p3b, gpt_8p3b, gpt_126m, gpt_357m, tiny
from toxjax.model import decoder, flops, partitioning

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO / "toxjax" / "configs"
CONFIG_FILES = sorted(p for p in CONFIGS_DIR.glob("*.py") if p.name != "__init__.py")
# Configs loaded by file path (--config=toxjax/configs/<name>.py[:<config string>]).
FLAG_CONFIGS = {
    path.stem: "base,126m" if path.stem == "study_paper" else ""
    for path in CONFIG_FILES
    if not path.stem.startswith("_")
}
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
    """toxjax/configs/default.py is the schema: each field assignment carries a comment."""
    source = (CONFIGS_DIR / "default.py").read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    fields = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            fields += 1
            line = lines[node.lineno - 1]
            above = lines[node.lineno - 2].strip()
            assert "#" in line or above.startswith("#"), f"uncommented field: {line.strip()}"
    assert fields > 40


def test_config_script_prints_its_parameter_count():
    result = subprocess.run(
        [sys.executable, str(CONFIGS_DIR / "gpt_126m.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "parameters: 125,950,464" in result.stdout


def test_configs_import_as_a_package_from_anywhere(tmp_path):
    """Installed with toxjax (setup.py): from outside the repository, with no sys.path help
    (python -I: neither the working directory nor PYTHONPATH on the path), every config imports
    as toxjax.configs.<name>, and each loads by file path through config_flags as it does from
    the repository (the config a console script or `python -m toxjax.main` elsewhere gets)."""
    script = textwrap.dedent(
        f"""
        import importlib, pathlib
        from absl import flags
        from ml_collections import config_flags
        import toxjax.configs as configs
        configs_dir = pathlib.Path({str(CONFIGS_DIR)!r})
        assert pathlib.Path(configs.__file__) == configs_dir / "__init__.py", configs.__file__
        names = {[path.stem for path in CONFIG_FILES]!r}
        modules = {{name: importlib.import_module("toxjax.configs." + name) for name in names}}
        for name, module in modules.items():
            assert pathlib.Path(module.__file__) == configs_dir / (name + ".py"), module.__file__
        flag_configs = {FLAG_CONFIGS!r}
        for name, config_string in flag_configs.items():
            path = str(configs_dir / (name + ".py"))
            spec = path + ":" + config_string if config_string else path
            config_flags.DEFINE_config_file("config_" + name, spec)
        flags.FLAGS(["prog"])
        for name, config_string in flag_configs.items():
            imported = modules[name].get_config(*([config_string] if config_string else []))
            loaded = getattr(flags.FLAGS, "config_" + name)
            assert loaded.to_dict() == imported.to_dict(), name
        print("loaded", len(modules), "modules and", len(flag_configs), "config files")
        """
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"loaded {len(CONFIG_FILES)} modules and {len(FLAG_CONFIGS)} config files" in (
        result.stdout
    )


def test_no_import_fallbacks_or_sys_path_patches():
    """Configs and benchmarks import configs normally; toxjax/configs/__init__.py is a docstring."""
    init_path = CONFIGS_DIR / "__init__.py"
    init = ast.parse(init_path.read_text())
    assert len(init.body) == 1 and ast.get_docstring(init), f"{init_path}: docstring only"
    assert {"default", "tiny", "demo", "study_paper", "_gpt"} <= {p.stem for p in CONFIG_FILES}
    for path in [init_path, *CONFIG_FILES, *sorted((REPO / "benchmarks").glob("*.py"))]:
        text = path.read_text()
        assert "except ImportError" not in text, path
        assert "sys.path" not in text, path


def test_the_default_config_lists_the_default_task_modules():
    """A config saved before data.task_modules existed resolves to what default.py sets."""
    from toxjax.configs import default
    from toxjax.data import tasks

    assert tuple(default.get_config().data.task_modules) == tasks.DEFAULT_TASK_MODULES


@pytest.mark.slow
def test_the_wheel_installs_no_top_level_package_but_toxjax(tmp_path):
    """`pip install .` must not install a `configs` (or `benchmarks`, `tests`) of its own."""
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("toxjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"toxjax"}, sorted(tops)
    assert "toxjax/configs/default.py" in names and "toxjax/assets/real/corpus.jsonl.gz" in names
    # Every module of the checkout is in the wheel (a folder without __init__.py would not be).
    modules = {str(p.relative_to(REPO)) for p in (REPO / "toxjax").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))
