"""python -m sresformer_jax.convert and sresformer_jax.checkpoint, end to end (CPU, no torch).

The registered variant used is spikingresformer_dvsg (the smallest) with random weights built from
interop.name_table: nothing runs the big model except one small jitted forward.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import checkpoint, convert, interop
from sresformer_jax.model import create_model
from sresformer_jax.pth import load_pth, save_pth

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
DVSG = dict(num_classes=11, img_size=64, T=16)  # the released DVS128 Gesture checkpoint's constructor kwargs


def _official_like_state_dict(model, seed=0) -> dict[str, np.ndarray]:
    """Random weights under the official names/shapes, plus BN num_batches_tracked like a real state dict.
    Firing-rate buffers and running variances are positive (a trained model's)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, (_, shape) in interop.name_table(model).items():
        if name.endswith("running_var") or "firing_rate" in name:
            sd[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            sd[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        if name.endswith(".bn.running_var"):
            sd[name[: -len("running_var")] + "num_batches_tracked"] = np.asarray(1234, np.int64)
    return sd


@pytest.fixture(scope="module")
def dvsg_sd():
    return _official_like_state_dict(create_model("spikingresformer_dvsg", **DVSG))


@pytest.fixture(scope="module")
def dvsg_pth(dvsg_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "spikingresformer_dvsg.pth"
    save_pth({"model": dvsg_sd, "epoch": 199, "max_acc1": 97.9}, path)
    return path


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "sresformer_jax.convert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _same_as_official(exported: dict, sd: dict) -> None:
    assert set(exported) == set(sd)
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):  # not kept in JAX; restored as 0
            assert exported[k].shape == () and exported[k].dtype == np.int64, k
            continue
        assert exported[k].dtype == v.dtype and exported[k].shape == v.shape, k
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


# ------------------------------------------------------------------------------------------------ happy path

@pytest.mark.slow
def test_cli_from_official_to_official_round_trip(dvsg_sd, dvsg_pth, tmp_path):
    out = tmp_path / "ckpt" / "dvsg"
    r = _cli("from-official", "--variant", "spikingresformer_dvsg", "--pth", dvsg_pth, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "spikingresformer_dvsg" in r.stdout and "2,709,830 parameters" in r.stdout
    assert "num_classes=11 (read from classifier.weight)" in r.stdout
    assert "sresformer_jax.checkpoint.load_model(" in r.stdout and "model.apply(variables, x, train=False)" in r.stdout
    assert str(out) in r.stdout

    model, variables = checkpoint.load_model(out)
    assert (model.num_classes, model.img_size, model.T, model.activation) == (11, 64, 16, "PLIF")
    assert set(variables) == {"params", "batch_stats", "firing_rates"}
    _same_as_official(interop.to_official(variables), dvsg_sd)
    meta = checkpoint.load_metadata(out)
    assert meta["variant"] == "spikingresformer_dvsg" and meta["num_params"] == 2709830
    manifest = GOLDEN / "official_state_dict_manifest.json"
    if manifest.exists():
        assert meta["num_params"] == json.loads(manifest.read_text())["spikingresformer_dvsg"]["num_params"]

    back = tmp_path / "export" / "dvsg.pth"
    r = _cli("to-official", "--checkpoint", out, "--out", back)
    assert r.returncode == 0, r.stderr
    exported = load_pth(back)
    assert list(exported) == ["model"]
    _same_as_official(exported["model"], dvsg_sd)


@pytest.mark.slow
def test_converted_checkpoint_evaluates(dvsg_pth, tmp_path):
    out = tmp_path / "dvsg"
    assert convert.main(["from-official", "--variant", "spikingresformer_dvsg", "--pth", str(dvsg_pth),
                         "--out", str(out)]) == 0
    model, variables = checkpoint.load_model(out)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 16, 16, 16, 3))  # [B, T, H, W, C] event frames, small
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert logits.shape == (16, 1, 11) and bool(jnp.all(jnp.isfinite(logits)))
    assert float(jnp.std(logits)) > 0


@pytest.mark.slow
def test_npz_input_and_output(dvsg_sd, dvsg_pth, tmp_path, capsys):
    npz = tmp_path / "weights.npz"
    np.savez(npz, **{f"model/{k}": v for k, v in dvsg_sd.items()})
    out = tmp_path / "from_npz"
    assert convert.main(["from-official", "--variant", "spikingresformer_dvsg", "--pth", str(npz), "--key", "model",
                         "--out", str(out)]) == 0
    _, variables = checkpoint.load_model(out)
    _same_as_official(interop.to_official(variables), dvsg_sd)
    flat = tmp_path / "flat.npz"
    assert convert.main(["to-official", "--checkpoint", str(out), "--out", str(flat)]) == 0
    with np.load(flat) as z:
        _same_as_official({k: z[k] for k in z.files}, dvsg_sd)
    assert "flat .npz of official state-dict names" in capsys.readouterr().out


@pytest.mark.slow
def test_bare_state_dict_with_ddp_prefix(dvsg_sd, tmp_path, capsys):
    pth = tmp_path / "bare.pth"
    save_pth({f"module.{k}": v for k, v in dvsg_sd.items()}, pth)
    out = tmp_path / "bare"
    assert convert.main(["from-official", "--variant", "spikingresformer_dvsg", "--pth", str(pth),
                         "--out", str(out), "--T", "4"]) == 0
    assert "stripped the 'module.' prefix" in capsys.readouterr().out
    model, variables = checkpoint.load_model(out)
    assert model.T == 4 and model.img_size == 64
    _same_as_official(interop.to_official(variables), dvsg_sd)


# ------------------------------------------------------------------------------------------------ bad inputs

def _only(tmp_path, *names):
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no output, no partial directory


@pytest.mark.parametrize("problem", ["missing", "unexpected", "mis-shaped"])
def test_bad_state_dict_is_listed_and_nothing_written(dvsg_sd, tmp_path, capsys, problem):
    sd = dict(dvsg_sd)
    if problem == "missing":
        del sd["layers.1.0.conv.weight"]
        key = "layers.1.0.conv.weight"
    elif problem == "unexpected":
        sd["layers.0.0.extra.weight"] = np.zeros(3, np.float32)
        key = "layers.0.0.extra.weight"
    else:
        sd["layers.2.3.W.weight"] = np.zeros((192, 192, 1, 1), np.float32)
        key = "layers.2.3.W.weight: expected [384, 192, 1, 1], got [192, 192, 1, 1]"
    pth = tmp_path / "bad.pth"
    save_pth({"model": sd}, pth)
    rc = convert.main(["from-official", "--variant", "spikingresformer_dvsg", "--pth", str(pth),
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.splitlines()
    assert lines[0].startswith("error: the weights in") and "1 problem" in lines[0]
    assert any(line.strip().startswith(f"{problem}: {key}") for line in lines), err
    assert lines[-1] == "nothing was written."
    _only(tmp_path, "bad.pth")


@pytest.mark.slow
def test_several_problems_one_line_each_in_a_subprocess(dvsg_sd, tmp_path):
    sd = dict(dvsg_sd)
    del sd["classifier.weight"], sd["layers.0.0.firing_rate_x"]
    sd["layers.9.9.weight"] = np.zeros(1, np.float32)
    sd["prologue.0.weight"] = np.zeros((32, 2, 3, 3), np.float32)
    pth = tmp_path / "bad.pth"
    save_pth({"model": sd}, pth)
    r = _cli("from-official", "--variant", "spikingresformer_dvsg", "--pth", pth, "--out", tmp_path / "out",
             "--num-classes", "11")
    assert r.returncode == 2 and r.stdout == ""
    assert "4 problems" in r.stderr
    for line in ["missing: classifier.weight (expected shape [11, 192])",
                 "missing: layers.0.0.firing_rate_x (expected shape [1, 1, 1, 1, 1])",
                 "unexpected: layers.9.9.weight (shape [1])",
                 "mis-shaped: prologue.0.weight: expected [32, 3, 3, 3], got [32, 2, 3, 3]"]:
        assert f"  {line}\n" in r.stderr, r.stderr
    _only(tmp_path, "bad.pth")


def test_weights_of_another_variant_are_refused(dvsg_pth, tmp_path):
    out = tmp_path / "out"
    r = _cli("from-official", "--variant", "spikingresformer_cifar", "--pth", dvsg_pth, "--out", out)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "do not fit spikingresformer_cifar" in r.stderr
    assert "  unexpected: layers.0.0.activation_in.w (shape [])" in r.stderr          # PLIF parameters
    assert "  mis-shaped: prologue.0.weight: expected [64, 3, 3, 3], got [32, 3, 3, 3]" in r.stderr
    assert "hint: these weights look like spikingresformer_dvsg" in r.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir()]


def test_golden_small_config_is_not_a_registered_variant(tmp_path, capsys):
    """The official init/ state dict of the golden CIFAR-style file (planes 16/32/64) is not spikingresformer_cifar."""
    golden = GOLDEN / "cifar_style_lif_t4.npz"
    rc = convert.main(["from-official", "--variant", "spikingresformer_cifar", "--pth", str(golden), "--key", "init",
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "mis-shaped: prologue.0.weight: expected [64, 3, 3, 3], got [16, 3, 3, 3]" in err
    assert "mis-shaped: classifier.weight: expected [100, 384], got [100, 64]" in err  # num_classes read: 100
    assert not (tmp_path / "out").exists()


def test_unsafe_pth_is_refused_by_the_cli(tmp_path, capsys):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    pth = tmp_path / "evil.pth"
    with zipfile.ZipFile(pth, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"model": Evil()}, protocol=2))
        zf.writestr("evil/version", "3\n")
    rc = convert.main(["from-official", "--variant", "spikingresformer_dvsg", "--pth", str(pth),
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and f"'{os.system.__module__}.system'" in err and "nothing was written." in err
    _only(tmp_path, "evil.pth")


@pytest.mark.slow
def test_existing_output_needs_force(dvsg_pth, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["from-official", "--variant", "spikingresformer_dvsg", "--pth", str(dvsg_pth), "--out", str(out)]
    assert convert.main(argv) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert convert.main(argv + ["--force"]) == 0
    assert not (out / "keep.txt").exists()
    checkpoint.load_model(out)
    _only(tmp_path, "out")  # no temporary or old directory left beside it

    pth = tmp_path / "x.pth"
    pth.write_bytes(b"old")
    assert convert.main(["to-official", "--checkpoint", str(out), "--out", str(pth)]) == 2
    assert pth.read_bytes() == b"old"
    assert convert.main(["to-official", "--checkpoint", str(out), "--out", str(pth), "--force"]) == 0
    assert set(load_pth(pth)["model"]) >= {"classifier.weight"}


def test_missing_inputs_are_clear(tmp_path, capsys):
    assert convert.main(["from-official", "--variant", "spikingresformer_ti", "--pth", str(tmp_path / "no.pth"),
                         "--out", str(tmp_path / "o")]) == 2
    assert f"no such file: {tmp_path / 'no.pth'}" in capsys.readouterr().err
    assert convert.main(["to-official", "--checkpoint", str(tmp_path / "nockpt"), "--out", str(tmp_path / "o.pth")]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint at {tmp_path / 'nockpt'}" in err and "save_model" in err
    _only(tmp_path)


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        convert.main(["from-official", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--variant" in text and "examples:" in text and "load_model" in text


# ------------------------------------------------------------------------------------------------ checkpoint module

@pytest.mark.slow
def test_checkpoint_round_trip_of_the_golden_config(tmp_path):
    """save_model / load_model on a non-registered config: the official init/ state dict of a golden file."""
    with np.load(GOLDEN / "dvs_style_plif_t8.npz") as z:
        cfg = json.loads(str(z["config"]))
        sd = {k[len("init/"):]: z[k] for k in z.files if k.startswith("init/")}
    model, variables = interop.from_official(cfg, sd, dtype=jnp.float32)
    path = checkpoint.save_model(tmp_path / "g", variables, model.config(), {"source": "golden"})
    assert path == (tmp_path / "g").absolute() and checkpoint.load_metadata(path) == {"source": "golden"}
    assert checkpoint.load_config(path) == model.config()
    model2, variables2 = checkpoint.load_model(path)
    assert model2.config() == model.config() and model2.dvs
    a, b = interop.to_official(variables), interop.to_official(variables2)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    _, bf = checkpoint.load_model(path, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree_util.tree_leaves(bf)} == {jnp.dtype(jnp.bfloat16)}


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no checkpoint at {tmp_path / 'none'}: expected a directory"):
        checkpoint.load_model(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a model checkpoint"):
        checkpoint.load_model(tmp_path / "empty")
    model = create_model("spikingresformer_dvsg", **DVSG)
    with pytest.raises(ValueError, match="unknown model config keys"):
        checkpoint.save_model(tmp_path / "c", {}, {"planes_typo": 1})
    with pytest.raises(ValueError, match=r"(?s)missing.*missing: params/classifier/kernel"):
        sd = _official_like_state_dict(model)
        _, variables = interop.from_official(model.config(), sd)
        del variables["params"]["classifier"]
        checkpoint.save_model(tmp_path / "c", variables, model.config())
    _only(tmp_path, "empty")
