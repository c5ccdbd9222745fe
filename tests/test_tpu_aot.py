"""The training step compiles for TPU pods, proven without a TPU: libtpu (``pip install "jax[tpu]"``) compiles the
sharded train step of a tiny model for a v5e:2x2 slice (``jax.experimental.topologies``), and the compiled program
divides the work: its only collectives are all-reduces of the gradients and statistics.

Skipped, saying so, where libtpu is not installed. The full-size programs are compiled by ``benchmarks/tpu_aot.py``
(the pod report), which takes minutes per program on two cores.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                 reason="libtpu is not installed (pip install 'jax[tpu]'): the TPU compile is not "
                                        "checked here")]

SCRIPT = textwrap.dedent(r"""
    import dataclasses, json
    import jax
    import numpy as np
    from jax.experimental import topologies
    from sresformer_jax.configs import quickstart
    from sresformer_jax.training import lower_steps
    from sresformer_jax.training.aot import collectives
    from sresformer_jax.training.steps import make_mesh

    c = quickstart.get_config()
    c.model.update(blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), group_size=8, img_size=16, T=2)
    c.dataset.img_size = 16
    c.precision = "bfloat16"
    mesh = make_mesh(topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices)
    train, _ = lower_steps(c, mesh, batch_per_device=8)
    compiled = train.compile()
    state = train.args_info[0][0]
    nbytes = lambda tree: int(sum(np.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree)))
    print("RESULT" + json.dumps({
        "platform": mesh.devices.flat[0].platform, "chips": int(mesh.devices.size),
        "conv_impl": "xla" if "conv" in compiled.as_text() else "?",
        "collectives": [dataclasses.asdict(x) for x in collectives(compiled)],
        "sizes": {k: nbytes(getattr(state, k)) for k in ("params", "batch_stats", "firing_rates")},
        "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}))
""")


def test_the_sharded_train_step_compiles_for_a_v5e_slice_and_divides_the_work():
    env = dict(os.environ, JAX_PLATFORMS="cpu",          # the host runs nothing; libtpu only compiles
               ALLOW_MULTIPLE_LIBTPU_LOAD="1")           # (nothing runs on a TPU, so another libtpu user is harmless)
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=580)
    assert p.returncode == 0, p.stderr[-4000:]
    r = json.loads(p.stdout.split("RESULT", 1)[1])
    assert r["platform"] == "tpu" and r["chips"] == 4 and r["temp_bytes"] > 0
    ops = {c["op"] for c in r["collectives"]}
    assert ops == {"all-reduce"}, ops                    # nothing gathers, permutes or scatters activations
    moved = sum(c["bytes"] for c in r["collectives"])
    sizes = r["sizes"]
    assert sizes["params"] <= moved <= 1.1 * (sizes["params"] + 3 * sizes["batch_stats"] + 2 * sizes["firing_rates"]
                                              + 64), (moved, sizes)
