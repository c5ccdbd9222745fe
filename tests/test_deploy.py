"""The deploy form (deploy.py): exact to the trained model on every golden file (float64 logits, spike counts and
SOPs), spike-driven by construction, exported and loaded without Flax, and bad files refused by name."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import deploy, energy

from conftest import GOLDEN_FILES, golden_model, golden_step, run

# the golden programs are compiled once per process (conftest.golden_model): the tests that run them share a worker
golden_group = pytest.mark.xdist_group("golden")
IMPLS = ["xla"] + (["auto"] if jax.default_backend() == "cpu" else [])       # auto: the event kernels on CPU


def _trained(name: str, impl: str):
    """A golden model after the official training step (so that BN statistics and firing rates are set), float64;
    its evaluation (logits, spike counts) from the programs the golden tests compile (``conftest.golden_model``)."""
    g, model, v, _ = golden_model(name, impl)
    r = golden_step(name, impl, grads=impl == "auto")
    variables = {"params": v["params"], **jax.tree.map(jnp.asarray, r["new_state"])}
    return g, model, variables, jnp.asarray(g["x"], jnp.float64), (r["eval_logits"], r["eval_counts"])


# the fast subset (pytest -m "not slow") folds one file on the platform's default lowering; the others are slow
FOLD_CASES = [pytest.param(name, impl, marks=() if (name, impl) == ("cifar_style_lif_t4.npz", IMPLS[-1]) else
                           pytest.mark.slow) for name in GOLDEN_FILES for impl in IMPLS]


@golden_group
@pytest.mark.parametrize("name,impl", FOLD_CASES)
def test_the_fold_is_exact_on_every_golden_file_float64(name, impl, x64):
    """Logits equal the training form's evaluation to 1e-9 (and the official evaluation logits to 1e-8), every
    neuron layer fires exactly the same number of spikes at every pixel, and the SOPs counted on the deploy form's
    own spikes equal the training form's."""
    g, model, variables, x, (ref, ref_counts) = _trained(name, impl)
    fn = deploy.fold(model, variables)
    logits, counts = fn(x, count_spikes=True)
    assert logits.shape == ref.shape and logits.dtype == jnp.float64
    np.testing.assert_allclose(logits, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(logits, g["eval_logits"], rtol=0, atol=1e-8)
    want, got = energy.host_counts(ref_counts), energy.host_counts(counts)
    assert set(want) == set(got)
    for layer in want:
        for key in want[layer]:
            np.testing.assert_array_equal(got[layer][key], want[layer][key], err_msg=f"{layer} {key}")
    assert energy.count_sops(model, counts, x.shape[0]) == energy.count_sops(model, ref_counts, x.shape[0])


@golden_group
def test_the_deploy_form_holds_no_batchnorm_and_no_scales(x64):
    g, model, variables, x, _ = _trained("cifar_style_lif_t4.npz", IMPLS[-1])
    fn = deploy.fold(model, variables)
    assert not any("bn" in k or "firing_rate" in k or "mean" in k or "var" in k for k in fn.weights)
    assert set(fn.weights) == set(deploy.weight_shapes(fn.graph["model"]))
    assert {k: tuple(v.shape) for k, v in fn.weights.items()} == deploy.weight_shapes(fn.graph["model"])
    t = fn.graph["thresholds"]["stage1_dssa1"]
    rates = variables["firing_rates"]["stage1_dssa1"]
    d = model.planes[0] // model.num_heads[0]
    np.testing.assert_allclose(t["lif_attn"], np.sqrt(np.asarray(rates["firing_rate_x"]) * d), rtol=1e-15)


@golden_group
def test_every_product_after_the_stem_must_take_spikes(monkeypatch, x64):
    """A non-binary operand (here: a neuron made to return its membrane-sized floats) is refused while tracing,
    naming the layer."""
    g, model, variables, x, _ = _trained("cifar_style_lif_t4.npz", IMPLS[-1])
    fn = deploy.fold(model, variables)
    monkeypatch.setattr(deploy, "_lif", lambda z, threshold, w, tau, reset: z * 0.5)
    with pytest.raises(deploy.NotSpikeDrivenError, match="stage1_dssa1/kv got a float64 operand"):
        fn.apply(fn.weights, x)


@golden_group
def test_other_resolutions_are_refused(x64):
    g, model, variables, x, _ = _trained("cifar_style_lif_t4.npz", IMPLS[-1])
    fn = deploy.fold(model, variables)
    with pytest.raises(ValueError, match="thresholds depend on the resolution"):
        fn(jnp.concatenate([x, x], axis=1))


@golden_group
@pytest.mark.slow
def test_export_and_load_round_trip_and_load_needs_no_flax(tmp_path, x64):
    g, model, variables, x, _ = _trained("dvs_style_plif_t8.npz", "xla")          # PLIF: the w scalars travel too
    fn = deploy.fold(model, variables)
    path = deploy.export(fn, tmp_path / "m.deploy")
    assert sorted(p.name for p in path.iterdir()) == ["graph.json", "weights.safetensors"]
    assert b"\x80" not in (path / "graph.json").read_bytes()[:2]
    fn2 = deploy.load(path, conv_impl="xla")
    assert fn2.graph == fn.graph
    np.testing.assert_array_equal(fn2(x), fn(x))
    np.save(tmp_path / "x.npy", np.asarray(x))
    np.save(tmp_path / "want.npy", np.asarray(fn(x)))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["flax"] = None                      # Flax is not needed to run a deploy form
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from sresformer_jax import deploy
        fn = deploy.load({str(path)!r})
        got = jax.jit(lambda f, x: f(x))(fn, np.load({str(tmp_path / 'x.npy')!r}))
        np.testing.assert_array_equal(np.asarray(got), np.load({str(tmp_path / 'want.npy')!r}))
        print("OK", fn.graph["conv_impl"])
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]
    with pytest.raises(FileExistsError):
        deploy.export(fn, path)


@golden_group
def test_bad_deploy_files_are_refused_with_the_names(tmp_path, x64):
    from safetensors.numpy import load_file, save_file
    g, model, variables, x, _ = _trained("cifar_style_lif_t4.npz", IMPLS[-1])
    path = deploy.export(deploy.fold(model, variables), tmp_path / "m.deploy")
    tensors = load_file(str(path / "weights.safetensors"))
    del tensors["stage2_gwffn1/conv/bias"]
    tensors["stage1_dssa1/kv/kernel"] = tensors["stage1_dssa1/kv/kernel"][..., :3]
    tensors["stage9/extra"] = np.zeros(2)
    save_file(tensors, str(path / "weights.safetensors"))
    with pytest.raises(deploy.DeployFileError) as e:
        deploy.load(path)
    msg = str(e.value)
    assert "missing: stage2_gwffn1/conv/bias" in msg and "unexpected: stage9/extra" in msg
    assert "mis-shaped: stage1_dssa1/kv/kernel: expected [4, 4, 16, 32], got [4, 4, 16, 3]" in msg
    (path / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(deploy.DeployFileError, match="not a readable safetensors file"):
        deploy.load(path)
    with pytest.raises(deploy.DeployFileError, match="expected a directory written by"):
        deploy.load(tmp_path)


@pytest.mark.slow
@pytest.mark.xdist_group("straight_eval")     # eval.py writes into the shared run: one writer at a time
def test_export_command_and_eval_deploy_on_a_training_run(straight, tmp_path):
    """As a user runs them: `python -m sresformer_jax.deploy export` on a run's best checkpoint, and
    `eval.py --deploy`, which reports the deploy form next to the training form."""
    import json

    wd, _ = straight
    out = tmp_path / "m.deploy"
    p = run(["-m", "sresformer_jax.deploy", "export", f"--checkpoint={wd}/best", f"--out={out}"])
    assert "wrote" in p.stdout and (out / "graph.json").is_file() and (out / "weights.safetensors").is_file()
    again = run(["-m", "sresformer_jax.deploy", "export", f"--checkpoint={wd}/best", f"--out={out}"], check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    e = run(["eval.py", f"--workdir={wd}", "--deploy"])
    assert "deploy form    top-1" in e.stdout and "prediction differs from the training form" in e.stdout
    full = json.loads((wd / "eval.json").read_text())
    report = full["deploy"]
    assert report["num_images"] == 359 and 0 <= report["predictions_differ"] <= 1
    # a 4-step run may not spike yet; the two forms must still count the same
    assert report["sops_per_image"] == pytest.approx(full["sops_per_image"], rel=1e-3, abs=1e-6)
    assert len(report["firing_rates"]) == len(full["firing_rates"]) == 20   # one block per stage


@pytest.mark.slow
def test_one_loader_for_workdirs_steps_and_deploy_exports(straight, tmp_path):
    """``sresformer_jax.load`` takes a training workdir, its best/ and checkpoints/, a step directory, and a deploy
    export, and returns (model, variables) for ``model.apply(variables, x, train=False)``."""
    import sresformer_jax
    from sresformer_jax import deploy

    wd, _ = straight
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 8, 8, 1))                   # digits: 8×8, one channel
    model, variables = sresformer_jax.load(wd)                                      # its best checkpoint
    logits = model.apply(variables, x, train=False)
    for where in (wd / "best", wd / "checkpoints" / "4", wd / "checkpoints"):
        m, v = sresformer_jax.load(where)
        chex.assert_trees_all_close(m.apply(v, x, train=False), logits, atol=1e-6)
    m, v = sresformer_jax.load(wd / "checkpoints" / "2")
    assert not np.allclose(m.apply(v, x, train=False), logits)                     # another step, other weights
    deploy.export(deploy.fold(model, variables), tmp_path / "m.deploy")
    fn, weights = sresformer_jax.load(tmp_path / "m.deploy")
    chex.assert_trees_all_close(fn.apply(weights, x, train=False), logits, atol=1e-5)
    with pytest.raises(ValueError, match="inference only"):
        fn.apply(weights, x, train=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds nothing.*training workdir.*deploy export"):
        sresformer_jax.load(tmp_path / "empty")
