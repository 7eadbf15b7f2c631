"""toxjax.launch.fit_check: the launcher's `run` refuses a config that does not fit the slice.

The compile subprocess is stubbed with recorded toxjax.compile output (launcher_test has the
slow test that really compiles).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from toxjax.launch import fit_check, launcher

# `python -m toxjax.compile --config=toxjax/configs/gpt_8p3b.py --topology=v5e:2x2 --steps=train
# --nounroll_layers --json`, as printed (XLA:TPU refused it: out of HBM).
RECORDED_8P3B_V5E_2X2 = {
    "step": "train",
    "config": "toxjax/configs/gpt_8p3b.py",
    "topology": "v5e:2x2",
    "num_devices": 4,
    "mesh": {"data": 1, "fsdp": 4, "tensor": 1},
    "layers": "scanned",
    "bytes_per_device": {
        "argument": 24987754508,
        "output": None,
        "temp": 265708151767,
        "alias": None,
        "total": 290695906275,
        "generated_code": None,
    },
    "hbm_bytes_per_device": 17179869184,
    "fits": False,
    "xla_flops": None,
    "model_flops": 5.798824324890624e16,
    "model_flops_per_device": 1.449706081222656e16,
    "projected_step_s": None,
    "projected_mfu": None,
    "projected_tokens_per_s_per_chip": None,
    "compile_s": 1.96,
    "projection": "none: XLA refused to compile (out of HBM)",
    "error": "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
    "temporaries (247.46G) exceeds available HBM (15.75G).",
}
RUN = ["run", "--name=t", "--zone=z", "--dry_run"]
ARGS = ["--", "--config=toxjax/configs/gpt_8p3b.py", "--workdir=gs://bkt/w"]


@pytest.fixture
def compiles(monkeypatch):
    """Replaces the compile subprocess: records its commands, answers with `reports`."""
    calls: list[list[str]] = []
    answer = {"reports": [RECORDED_8P3B_V5E_2X2], "returncode": 0, "stderr": ""}

    def fake(command):
        calls.append(command)
        stdout = "".join(json.dumps(r) + "\n" for r in answer["reports"])
        return subprocess.CompletedProcess(command, answer["returncode"], stdout, answer["stderr"])

    monkeypatch.setattr(fit_check, "run_compile", fake)
    return calls, answer


def _launch(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = launcher.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_dry_run_refuses_a_config_that_does_not_fit(compiles, capsys):
    calls, _ = compiles
    argv = [*RUN, "--topology=v5e:2x2", *ARGS, "--config.optim.z_loss", "1e-4"]
    code, out, err = _launch(argv, capsys)
    assert code == 2 and out == ""
    assert "toxjax/configs/gpt_8p3b.py does not fit v5e:2x2: its train step needs 270.73 GiB" in err
    assert "16.00 GiB of HBM" in err and "arguments 23.27 GiB, temporaries 247.46 GiB" in err
    for hint in ("config.mesh.ici.fsdp", "remat_policy", "global_batch_size", "grad_accum_steps"):
        assert hint in err
    (command,) = calls
    assert command[1:3] == ["-m", "toxjax.compile"]
    assert command[3:] == [
        "--config=toxjax/configs/gpt_8p3b.py",
        "--config.optim.z_loss=1e-4",
        "--topology=v5e:2x2",
        "--steps=train",
        "--nounroll_layers",
        "--json",
    ]


def test_a_config_that_fits_is_launched_with_a_note(compiles, capsys):
    calls, answer = compiles
    fitting = dict(RECORDED_8P3B_V5E_2X2, fits=True, topology="v5p:4x4x4")
    fitting["hbm_bytes_per_device"] = 95 * 1024**3
    fitting["bytes_per_device"] = dict(fitting["bytes_per_device"], total=40 * 1024**3)
    answer["reports"] = [fitting, dict(fitting, step="generate"), dict(fitting, step="loglik")]
    argv = [*RUN, "--accelerator_type=v5p-128", *ARGS, "--mode=train_and_eval"]
    code, out, err = _launch(argv, capsys)
    assert code == 0 and out.startswith("gcloud compute tpus tpu-vm ssh t ")
    assert "--topology=v5p:4x4x4" in calls[0] and "--steps=train,generate,loglik" in calls[0]
    assert "# fit check: the train step needs 40.00 GiB per device of 95.00 GiB HBM" in err


@pytest.mark.parametrize(
    ("extra", "args", "note"),
    [
        (["--skip_fit_check", "--topology=v5e:2x2"], ARGS, "skipped (--skip_fit_check)"),
        ([], ARGS, "skipped: give --topology"),
        (["--accelerator_type=v3-8"], ARGS, "skipped: give --topology"),
        (["--topology=v5e:2x2", "--module=toxjax.scoring"], ARGS, "skipped: no --config"),
        (["--topology=v5e:2x2"], ["--", "--workdir=gs://bkt/w"], "skipped: no --config"),
    ],
)
def test_fit_check_skips_say_why_on_stderr(compiles, capsys, extra, args, note):
    calls, _ = compiles
    code, out, err = _launch([*RUN, *extra, *args], capsys)
    assert code == 0 and len(out.splitlines()) == 1 and not calls
    assert f"# fit check {note}" in err


def test_a_failed_compile_stops_the_launch(compiles, capsys):
    _, answer = compiles
    answer.update(reports=[], returncode=1, stderr="x\nModuleNotFoundError: No module named 'jax'")
    code, _, err = _launch([*RUN, "--topology=v5e:2x2", *ARGS], capsys)
    assert code == 2
    assert "could not compile toxjax/configs/gpt_8p3b.py for v5e:2x2: ModuleNotFoundError" in err
    assert "tpu-aot" in err and "--skip_fit_check" in err


@pytest.mark.parametrize(
    ("accelerator_type", "topology"),
    [("v4-8", "v4:2x2x1"), ("v4-32", "v4:2x2x4"), ("v5p-8", "v5p:2x2x1"),
     ("v5p-128", "v5p:4x4x4"), ("v5litepod-4", "v5e:2x2"), ("v5e-16", "v5e:4x4"),
     ("v6e-8", "v6e:2x4"), ("v6e-256", "v6e:16x16"), ("v5p-9", None), ("v5e-12", None),
     ("v3-8", None)],
)  # fmt: skip
def test_topology_for_accelerator(accelerator_type, topology):
    assert fit_check.topology_for_accelerator(accelerator_type) == topology


def test_config_args_takes_both_absl_forms():
    args = ["--mode=train", "--config", "c.py", "--config.mesh.ici.fsdp", "-1", "-config.a=b"]
    args += ["--configs=x", "--workdir=gs://b/w"]
    assert fit_check.config_args(args) == [
        "--config=c.py",
        "--config.mesh.ici.fsdp=-1",
        "--config.a=b",
    ]
    with pytest.raises(fit_check.FitCheckError, match="--config.a is given without a value"):
        fit_check.config_args(["--config.a"])


@pytest.mark.parametrize(
    ("module", "mode", "steps"),
    [("toxjax.main", None, ["train"]), ("toxjax.main", "eval", ["generate", "loglik"]),
     ("toxjax.main", "train_and_eval", ["train", "generate", "loglik"]),
     ("toxjax.study", None, ["train", "generate", "loglik"])],
)  # fmt: skip
def test_steps_follow_what_the_launch_runs(module, mode, steps):
    assert fit_check.steps_for(module, mode) == steps
