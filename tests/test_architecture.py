"""The one description of the architecture (``architecture.blocks``) agrees with everything built from it or
checked against it: the Flax parameter tree and neuron layers of the model, the deploy form's tensors, the SOP layer
list, and the official state-dict manifest of every variant."""
from __future__ import annotations

import json

import jax
import pytest
from flax import linen as nn

from sresformer_jax import architecture, deploy, energy, interop, trees
from sresformer_jax.layers import Neuron
from sresformer_jax.model import VARIANTS, SpikingResformer, dummy_input

from conftest import GOLDEN, GOLDEN_FILES, load_golden

MANIFEST = json.loads((GOLDEN / "official_state_dict_manifest.json").read_text())
OFFICIAL_SOPS = json.loads((GOLDEN / "official_sops.json").read_text())
CONFIGS = {**{name: dict(VARIANTS[name]) for name in VARIANTS},
           **{name: load_golden(name)["config"] for name in GOLDEN_FILES}}


def _model(name: str) -> SpikingResformer:
    cfg = {k: v for k, v in CONFIGS[name].items() if k in VARIANTS["spikingresformer_ti"]}
    return SpikingResformer.from_config(cfg, conv_impl="xla")


def _traced(model: SpikingResformer):
    """The model's variables (shapes) and the paths of the neuron layers its forward calls, in call order."""
    called = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Neuron) and context.method_name == "__call__":
            called.append("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    def init():
        with nn.intercept_methods(record):
            return model.init(jax.random.PRNGKey(0), dummy_input(model), train=False)
    return jax.eval_shape(init), called


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_flax_tree_and_neurons_are_the_description(name):
    model = _model(name)
    variables, called = _traced(model)
    params = trees.paths(variables["params"])
    convs = architecture.convs(model)
    want = {f"{c.path}/kernel": c.kernel_shape for c in convs}
    want |= {f"{c.path}/bn/{leaf}": (c.cout,) for c in convs for leaf in ("scale", "bias")}
    want["classifier/kernel"] = architecture.classifier(model)
    if model.activation == "PLIF":
        want |= {f"{n.path}/w": () for n in architecture.neurons(model)}
    assert trees.differences(want, params) == []
    assert called == [n.path for n in architecture.neurons(model)]             # the same layers, in forward order
    stats = trees.paths(variables["batch_stats"])
    assert trees.differences({f"{c.path}/bn/{leaf}": (c.cout,) for c in convs for leaf in ("mean", "var")},
                             stats) == []
    dssa = [b for b in architecture.blocks(model) if b.kind == "dssa"]
    assert trees.differences({f"{b.path}/firing_rate_{r}": (b.heads,) for b in dssa for r in ("x", "attn")},
                             trees.paths(variables["firing_rates"])) == []


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_the_official_names_are_the_manifests(name):
    """Every official state-dict name is a description's module (convolution, its BatchNorm, neuron, block,
    classifier) with its leaf, and the name table maps each to one Flax leaf."""
    model = _model(name)
    official = {k for k in MANIFEST[name]["state_dict"] if not k.endswith("num_batches_tracked")}
    assert set(interop.name_table(model)) == official
    from_description = {f"{c.official}.weight" for c in architecture.convs(model)}
    from_description |= {f"{c.bn_official}.bn.{leaf}" for c in architecture.convs(model)
                         for leaf in ("weight", "bias", "running_mean", "running_var")}
    from_description |= {f"{b.official}.firing_rate_{r}" for b in architecture.blocks(model) if b.kind == "dssa"
                         for r in ("x", "attn")}
    from_description |= {f"{n.official}.w" for n in architecture.neurons(model) if model.activation == "PLIF"}
    from_description.add("classifier.weight")
    assert from_description == official


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_the_sop_layers_are_the_description_and_the_officials(name):
    model = _model(name)
    layers = energy.synaptic_layers(model)
    assert [layer.name for layer in layers] == [x.official for x in architecture.synapses(model)]
    assert [layer.name for layer in layers] == list(OFFICIAL_SOPS[name]["per_layer_sops_per_image"])
    assert all("/".join(layer.neuron) in {n.path for n in architecture.neurons(model)} for layer in layers)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_deploy_form_holds_the_descriptions_tensors(name):
    model = _model(name)
    shapes = deploy.weight_shapes(model.config())
    want = {f"{c.path}/{k}": s for c in architecture.convs(model)
            for k, s in (("kernel", c.kernel_shape), ("bias", (c.cout,)))}
    want["classifier/kernel"] = architecture.classifier(model)
    if model.activation == "PLIF":
        want |= {f"{n.path}/w": () for n in architecture.neurons(model)}
    assert trees.differences(want, shapes) == []


def test_official_module_names():
    assert architecture.official_module("stem/bn") == "prologue.1"
    assert architecture.official_module("stage1_dssa1/kv") == "layers.0.0.W"
    assert architecture.official_module("stage2_downsample/lif") == "layers.1.0.activation"
    assert architecture.official_module("stage3_gwffn2/conv/bn") == "layers.2.4.conv.0.2"
    with pytest.raises(KeyError, match="no official name"):
        architecture.official_module("stage1_mlp1")
