"""SOPs, energy, dense MACs and firing rates (sresformer_jax.energy) against hand counts, the official
SOPMonitor numbers of the golden files (tests/golden/official_sops.json) and the dense MAC table computed from the official code."""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import energy, interop
from sresformer_jax.model import NEURON_DEFAULTS, create_model
from sresformer_jax.neurons import SPIKE_COUNTS

from conftest import GOLDEN, GOLDEN_FILES, golden_model, golden_step

pytestmark = pytest.mark.xdist_group("golden")   # one worker compiles the golden programs (conftest.golden_model)

OFFICIAL_SOPS = json.loads((GOLDEN / "official_sops.json").read_text())
MANIFEST = json.loads((GOLDEN / "official_state_dict_manifest.json").read_text())


# ------------------------------------------------------------------------------- toy layers, hand counts

def _official_conv_sops(spikes: np.ndarray, features: int, kernel: int, stride: int, padding: int,
                        groups: int) -> float:
    """SOPMonitor.cal_sop_conv: Σ conv(spikes, all-ones kernel) over the output (float64, NHWC)."""
    cin = spikes.shape[-1]
    ones = jnp.ones((kernel, kernel, cin // groups, features), jnp.float64)
    out = jax.lax.conv_general_dilated(jnp.asarray(spikes, jnp.float64), ones, (stride, stride),
                                       ((padding, padding), (padding, padding)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=groups)
    return float(out.sum())


def _count_map(spikes: np.ndarray) -> np.ndarray:
    """[T·B, H, W, C] spikes → per-pixel counts [H, W] (what Neuron sows as ``map``)."""
    return spikes.sum(axis=(0, 3)).astype(np.int32)


def test_coverage_by_hand():
    # 3×3, pad 1, stride 1 on 5 pixels: the borders are reached by 2 windows, the inside by 3.
    np.testing.assert_array_equal(energy.coverage_1d(5, 3, 1, 1), [2, 3, 3, 3, 2])
    # 3×3, pad 1, stride 2 on 5 pixels: windows start at -1, 1, 3.
    np.testing.assert_array_equal(energy.coverage_1d(5, 3, 2, 1), [1, 2, 1, 2, 1])
    # 3×3, pad 1, stride 2 on 4 pixels: windows at -1, 1 (the last pixel only once).
    np.testing.assert_array_equal(energy.coverage_1d(4, 3, 2, 1), [1, 2, 1, 1])
    # p×p stride p: each pixel once; a tail the patch size does not divide is never read.
    np.testing.assert_array_equal(energy.coverage_1d(8, 4, 4, 0), np.ones(8))
    np.testing.assert_array_equal(energy.coverage_1d(5, 2, 2, 0), [1, 1, 1, 1, 0])
    np.testing.assert_array_equal(energy.coverage((3, 5), 1), np.ones((3, 5)))


def test_conv_sops_by_hand():
    m = np.zeros((5, 5), np.int32)
    m[0, 0] = 1   # corner: 2 × 2 windows of a 3×3 pad-1 conv
    m[0, 2] = 2   # top edge: 2 × 3 windows, 2 spikes
    m[2, 2] = 3   # centre: 3 × 3 windows, 3 spikes
    # 3×3 pad 1, 8 outputs: (1·4 + 2·6 + 3·9) · 8
    assert energy.conv_sops(m, 8, 3, 1, 1) == (4 + 12 + 27) * 8
    # grouped (2 groups of 4 outputs): each input channel reaches only its group's 4 outputs
    assert energy.conv_sops(m, 8, 3, 1, 1, groups=2) == (4 + 12 + 27) * 4
    # 3×3 stride 2 pad 1 (5 → 3): cov = [1,2,1,2,1] per axis → (0,0): 1, (0,2): 1, (2,2): 1
    assert energy.conv_sops(m, 6, 3, 2, 1) == (1 + 2 + 3) * 6
    m2 = np.zeros((5, 5), np.int32)
    m2[1, 1], m2[1, 2] = 1, 5  # cov 2·2 and 2·1
    assert energy.conv_sops(m2, 6, 3, 2, 1) == (4 + 5 * 2) * 6
    # 1×1 and p×p/p: every spike reaches exactly one output position per output channel
    assert energy.conv_sops(m, 7, 1) == 6 * 7
    m4 = np.arange(16, dtype=np.int32).reshape(4, 4)
    assert energy.conv_sops(m4, 10, 2, 2, 0) == int(m4.sum()) * 10


@pytest.mark.parametrize("kernel,stride,padding,groups,hw", [
    (3, 1, 1, 1, (6, 5)),     # GWFFN-like 3×3 pad 1
    (3, 1, 1, 4, (6, 6)),     # group-wise
    (3, 2, 1, 1, (7, 6)),     # downsample, odd size
    (4, 4, 0, 1, (8, 8)),     # DSSA p×p stride p
    (2, 2, 0, 1, (5, 4)),     # p does not divide H: tail row unused
    (1, 1, 0, 1, (3, 3)),     # 1×1
])
def test_conv_sops_match_official_definition(x64, kernel, stride, padding, groups, hw):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + groups)
    spikes = (rng.random((3, *hw, 8)) < 0.3).astype(np.float64)       # [T·B, H, W, C]
    spikes[:, 0, :, :] = 1.0                                            # a full border row
    ref = _official_conv_sops(spikes, 12, kernel, stride, padding, groups)
    got = energy.conv_sops(_count_map(spikes), 12, kernel, stride, padding, groups)
    assert isinstance(got, int) and got == ref


def test_layer_sops_matmuls_by_hand():
    counts = {("b", "lif_in"): {"total": 7, "numel": 64, "map": np.full((4, 8), 0, np.int64)},
              ("b", "lif_attn"): {"total": 5, "numel": 99}}
    counts[("b", "lif_in")]["map"][0, :7] = 1
    mm1 = energy.SynapticLayer("m1", ("b", "lif_in"), "matmul1", features=1, kernel=2)
    mm2 = energy.SynapticLayer("m2", ("b", "lif_attn"), "matmul2", features=16)
    assert energy.layer_sops(mm1, counts) == (2 * 4) * 7   # N' = (4/2)·(8/2) per spike
    assert energy.layer_sops(mm2, counts) == 16 * 5        # d per spike


# ------------------------------------------------------------------------------- golden: official SOPMonitor

def _strip_nbt(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@functools.lru_cache(maxsize=None)
def _golden(name: str):
    """The training forward from ``init`` and the evaluation forward from the official ``after_train`` state, both
    with spike counting, on the programs the golden tests compile (``conftest.golden_model``). Host results."""
    g, model, _, programs = golden_model(name)
    r = golden_step(name)
    with jax.enable_x64(True):
        _, eval_vars = interop.from_official(g["config"], {**g["init"], **_strip_nbt(g["after_train"])},
                                             dtype=jnp.float64)
        logits, counts = programs["evaluate"](eval_vars, jnp.asarray(g["x"], jnp.float64))
    np.testing.assert_allclose(np.asarray(logits), g["eval_logits"], rtol=0, atol=1e-8)
    eval_state = {SPIKE_COUNTS: jax.tree_util.tree_map(np.asarray, counts)}
    return dict(model=model, batch=g["x"].shape[0], eval_state=eval_state,
                eval_counts=energy.host_counts(eval_state), train_counts=energy.host_counts(
                    {SPIKE_COUNTS: r["train_counts"]}), spike_rates=g["spike_rates"])


def _golden_eval(name: str):
    r = _golden(name)
    return r["model"], r["eval_counts"], r["batch"], r["eval_state"]


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_sops_match_official_exactly(name):
    model, counts, batch, _ = _golden_eval(name)
    ref = OFFICIAL_SOPS[name]
    assert ref["batch"] == batch
    assert model.config() == {"dvs": False, **NEURON_DEFAULTS, **ref["config"]}   # the official neuron
    totals = energy.sop_totals(model, counts)
    per_image = ref["per_layer_sops_per_image"]
    assert list(totals)[:-1] == list(per_image), "layer names/order differ from the official SOPMonitor"
    for layer, value in per_image.items():           # integers: per-image value × batch, exactly
        assert totals[layer] == round(value * batch) and value * batch == round(value * batch), layer
    assert totals["total"] == round(ref["sops_per_image"] * batch)
    sops = energy.count_sops(model, counts, batch)
    assert {k: sops[k] for k in per_image} == per_image
    assert sops["total"] == ref["sops_per_image"]


@pytest.mark.slow
@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_energy_report_matches_official(name):
    model, _, batch, state = _golden_eval(name)
    ref = OFFICIAL_SOPS[name]
    rep = energy.energy_report(model, state, batch)   # the raw mutable-state dict is accepted too
    assert rep["sops_per_image"] == ref["sops_per_image"]
    assert rep["energy_mj"] == pytest.approx(ref["energy_mj_per_image"], rel=1e-9)
    assert rep["per_layer_sops"] == ref["per_layer_sops_per_image"]
    assert rep["num_images"] == batch
    macs = rep["macs"]
    assert rep["macs_per_image"] == model.T * rep["macs_per_step"] == macs["per_image"]["total"]
    assert rep["as_power_ratio"] == pytest.approx(
        4.6 * macs["per_step"]["thop_total"] / (0.9 * ref["sops_per_image"]), rel=1e-12)
    assert rep["as_power_ratio_per_image"] == pytest.approx(
        4.6 * model.T * macs["per_step"]["total"] / (0.9 * ref["sops_per_image"]), rel=1e-12)
    assert list(rep["firing_rates"]) == list(_golden(name)["spike_rates"])
    for k, (t, n) in energy.spike_totals(state).items():
        assert rep["firing_rates"][k] == t / n


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_training_firing_rates_match_official(name):
    counts, ref = _golden(name)["train_counts"], _golden(name)["spike_rates"]
    rates = energy.firing_rates(counts)
    assert list(rates) == list(ref), "neuron names/order differ from the official modules"
    totals = energy.spike_totals(counts)
    for k, r in ref.items():
        t, n = totals[k]
        # The official rates are stored in float32: the integer counts agree exactly, and the rate
        # agrees to float32 rounding (exact where the element count is a power of two).
        assert round(r * n) == t, k
        assert abs(rates[k] - r) <= max(1e-12, 2.0 ** -24 * r), k


def test_counter_accumulates_over_batches():
    model, counts, batch, _ = _golden_eval(GOLDEN_FILES[0])
    one = energy.sop_totals(model, counts)
    # A second, smaller "batch": half of every count (integer arithmetic stays exact).
    half = {p: {k: v // 2 for k, v in c.items()} for p, c in counts.items()}
    two = energy.sop_totals(model, half)
    counter = energy.SOPCounter(model)
    counter.update(counts, batch).update(half, 1)
    rep = counter.report()
    assert rep["num_images"] == batch + 1
    assert rep["per_layer_sops_total"] == {k: one[k] + two[k] for k in one if k != "total"}
    assert rep["sops_total"] == one["total"] + two["total"]
    assert rep["sops_per_image"] == (one["total"] + two["total"]) / (batch + 1)
    # main.py's convention: mean of the per-batch sums, divided by the (largest) nominal batch size
    official = counter.report(official_averaging=True)
    assert official["sops_per_image"] == pytest.approx((one["total"] + two["total"]) / 2 / batch, rel=1e-15)
    # a repeated identical batch leaves the per-image numbers unchanged
    same = energy.SOPCounter(model).update(counts, batch).update(counts, batch).report()
    assert same["per_layer_sops"] == energy.SOPCounter(model).update(counts, batch).report()["per_layer_sops"]


def test_missing_counts_raise():
    model, counts, _, _ = _golden_eval(GOLDEN_FILES[0])
    with pytest.raises(ValueError, match="mutable"):
        energy.count_sops(model, {SPIKE_COUNTS: {}}, 1)
    partial = dict(counts)
    partial.pop(("stage1_dssa1", "lif_attn"))
    with pytest.raises(KeyError, match="lif_attn"):
        energy.sop_totals(model, partial)
    with pytest.raises(ValueError, match="stage-1 size"):
        energy.SOPCounter(model).update(counts, 4).report(img_size=128)


# ------------------------------------------------------------------- dense MACs (from the official code)

# variant, overrides → stem, rest (everything after the stem, classifier included), DSSA matmuls, total (G)
OFFICIAL_MACS = [
    ("spikingresformer_ti", {}, 0.118, 3.909, 0.285, 4.03),
    ("spikingresformer_s", {}, 0.118, 5.749, 0.354, 5.87),
    ("spikingresformer_m", {}, 0.118, 10.576, 0.492, 10.69),
    ("spikingresformer_l", {}, 0.236, 18.127, 0.708, 18.36),
    ("spikingresformer_l", {"img_size": 288}, 0.390, 30.729, 1.935, 31.12),
    ("spikingresformer_cifar", {"img_size": 32, "num_classes": 10}, 0.0018, 1.214, 0.030, 1.22),
    ("spikingresformer_s", {"img_size": 128, "num_classes": 10}, 0.0385, 1.799, 0.038, 1.84),
]


def _close(value: int, table: float) -> bool:
    """value (MACs) rounds to the table's number (in G, as many decimals as printed)."""
    decimals = len(repr(table).split(".")[1])
    return round(value / 1e9, decimals) == table


@pytest.mark.parametrize("variant,overrides,stem,rest,matmul,total", OFFICIAL_MACS)
def test_dense_macs_spec_table(variant, overrides, stem, rest, matmul, total):
    model = create_model(variant, **overrides)
    macs = energy.dense_macs(model)
    step = macs["per_step"]
    assert _close(step["stem"], stem)
    assert _close(step["spiking"] + step["classifier"], rest)
    assert _close(step["matmul"], matmul)
    assert _close(step["total"], total)
    assert step["total"] == step["stem"] + step["spiking"] + step["classifier"]
    assert macs["per_image"] == {k: model.T * v for k, v in step.items()}


def test_dense_macs_ti_exact():
    step = energy.dense_macs(create_model("spikingresformer_ti"))["per_step"]
    assert step["stem"] == 112 * 112 * 64 * 3 * 49
    assert step["matmul"] == 2 * 196 * (64 * 3136 + 2 * 192 * 784 + 3 * 384 * 196)
    assert step["classifier"] == 384 * 1000


@pytest.mark.parametrize("variant", sorted(MANIFEST))
def test_dense_macs_layers_follow_official_weights(variant):
    """Every official conv/linear weight has a MAC entry = weight numel × output positions, and the thop BN
    term is 4 × every BN's output size."""
    model = create_model(variant, **MANIFEST[variant]["constructor_kwargs"])
    macs = energy.dense_macs(model)
    layers = macs["per_layer_step"]
    shapes = MANIFEST[variant]["state_dict"]
    weights = {k[: -len(".weight")]: v for k, v in shapes.items()
               if k.endswith(".weight") and len(v) in (2, 4)}
    matmuls = {k for k in layers if k.endswith((".matmul1", ".matmul2"))}
    assert set(layers) - matmuls == set(weights)
    assert len(matmuls) == 2 * sum(model.blocks)
    sizes = model.stage_sizes(model.img_size)
    stem_hw = ((model.img_size + 1) // 2) ** 2 if model.prologue == "default" else model.img_size ** 2
    bn = 0
    for name, shape in weights.items():
        numel = int(np.prod(shape))
        if name == "classifier":
            assert layers[name] == numel
            continue
        stage = int(name.split(".")[1]) if name.startswith("layers.") else None
        h, w = sizes[stage] if stage is not None else (None, None)
        if name == "prologue.0":
            area = stem_hw
        elif name.endswith(".W"):
            p = model.patch_sizes[stage]
            area = (h // p) * (w // p)
        else:
            area = h * w
        assert layers[name] == numel * area, name
        bn += shape[0] * area                    # the BN after this conv sees C_out × area elements
    assert macs["per_step"]["bn_thop"] == 4 * bn
    assert macs["per_step"]["thop_total"] == macs["per_step"]["total"] + 4 * bn


def test_as_power_ratio_definition():
    """main.py: 4.6 · MACs (thop, per step) / (0.9 · SOPs per image); energy 0.9 pJ per SOP in mJ."""
    model, counts, batch, _ = _golden_eval(GOLDEN_FILES[0])
    rep = energy.SOPCounter(model).update(counts, batch).report()
    assert rep["energy_mj"] == pytest.approx(rep["sops_per_image"] * 0.9e-9, rel=1e-15)
    assert rep["e_ac_pj"] == 0.9 and rep["e_mac_pj"] == 4.6
