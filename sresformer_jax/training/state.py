"""The train state: one explicit pytree (step, params, BN statistics, firing rates, optimizer, RNG, loss scale)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..model import init_key
from .loss_scale import LossScale, make_loss_scale


@struct.dataclass
class TrainState:
    step: jax.Array            # int32 scalar: optimizer steps taken (= data position)
    params: Any
    batch_stats: Any
    firing_rates: Any
    opt_state: Any
    rng: jax.Array             # uint32 [2]: raw PRNG key; step keys are fold_in(rng, step)
    loss_scale: LossScale      # float16: DynamicLossScale (scale, counter); else NoLossScale (no leaves)

    def variables(self) -> dict:
        """The model variables (what ``model.apply`` takes)."""
        return {"params": self.params, "batch_stats": self.batch_stats, "firing_rates": self.firing_rates}


def create_train_state(model, tx, rng: jax.Array, input_shape: tuple[int, ...], param_dtype=jnp.float32,
                       loss_scale: LossScale | None = None) -> TrainState:
    """Fresh state: official initialisation, firing rates zero (set by the first training step); ``loss_scale``
    (``loss_scale.make_loss_scale``) defaults to none."""
    init_rng, state_rng = jax.random.split(rng)
    x = jnp.zeros((1,) + tuple(input_shape), param_dtype)
    variables = model.init(init_key(init_rng), x, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                      firing_rates=variables["firing_rates"], opt_state=tx.init(params), rng=state_rng,
                      loss_scale=make_loss_scale("float32") if loss_scale is None else loss_scale)
