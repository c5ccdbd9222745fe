"""train.py / eval.py as a user runs them: quickstart steps + eval (subprocesses), two processes through
jax.distributed against one, and the command line's errors (in-process, ``cli.train(argv)``)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from conftest import final_params, run

pytestmark = pytest.mark.slow         # every test here runs train.py/eval.py


@pytest.mark.xdist_group("straight_eval")     # eval.py writes into the shared run: one writer at a time
def test_quickstart_steps_then_eval(straight):
    wd, (stdout, _) = straight
    assert "python eval.py --workdir=" in stdout
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["split"] == "train"] == [2, 4]
    assert all(np.isfinite(r["loss"]) for r in recs)
    assert (wd / "curves.png").stat().st_size > 0 and any((wd / "tensorboard").iterdir())
    assert sorted(int(d.name) for d in (wd / "checkpoints").iterdir() if d.name.isdigit()) == [2, 4]
    e = run(["eval.py", f"--workdir={wd}"])
    report = json.loads((wd / "eval.json").read_text())
    for key in ("top1", "top5", "sops_per_image", "energy_mj", "firing_rates"):
        assert key in report
    assert report["num_images"] == 359 and len(report["firing_rates"]) == 20   # one block per stage (TINY)
    assert report["energy_mj"] == pytest.approx(0.9e-9 * report["sops_per_image"])
    assert "SOPs / image" in e.stdout and (wd / "firing_rates.png").stat().st_size > 0


def test_two_processes_match_one(straight_long, two_processes_long):
    """4 devices in 2 processes compute what 1 device computes over the same global batches (each device its
    shard; BatchNorm and firing-rate statistics over the global batch)."""
    wd, outs = two_processes_long
    assert "4 cpu device(s), 2 process(es)" in outs[0][1]
    a, sa = final_params(straight_long)
    b, sb = final_params(wd)
    assert sa == sb
    worst = max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-12)) for k in a)
    assert worst < 1e-3, worst


def test_config_overrides_and_unknown_keys(tmp_path, capsys):
    from sresformer_jax import cli
    assert cli.train(["train.py", f"--workdir={tmp_path}", "--config.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert cli.train(["train.py", f"--workdir={tmp_path}", "--config.batch_size=abc"]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_init_from_transfers_everything_but_the_classifier(straight):
    """config.init_from = the official transfer(): all tensors but classifier.*, BN stats and firing rates too."""
    import optax
    from sresformer_jax.configs import quickstart
    from sresformer_jax.model import build_model
    from sresformer_jax.training.state import create_train_state
    from sresformer_jax.training.trainer import _transfer
    wd, _ = straight
    cfg = quickstart.get_config()
    model = build_model({**cfg.model.to_dict(), "blocks": (1, 1, 1)})            # TINY's model
    fresh = jax.jit(lambda r: create_train_state(model, optax.sgd(0.1), r, (8, 8, 1)))(jax.random.PRNGKey(7))
    moved = _transfer(fresh, wd)
    src, _ = final_params(wd)
    for coll in ("params", "batch_stats", "firing_rates"):
        flat = {f"['{coll}']" + jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(getattr(moved, coll))[0]}
        for k, v in flat.items():
            if "classifier" in k:
                np.testing.assert_array_equal(v, np.asarray(fresh.params["classifier"]["kernel"]))
            else:
                np.testing.assert_array_equal(v, src[k], err_msg=k)
    assert float(np.abs(src["['firing_rates']['stage1_dssa1']['firing_rate_x']"]).min()) > 0
