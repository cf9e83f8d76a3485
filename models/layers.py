"""Keras objects of beatmon's own, registered so safe-mode loading finds them.

Importing this module imports Keras; the lab imports it before building or
loading a model. Everything here is a plain serialisable class: no Lambda
layers, nothing that needs arbitrary code on loading.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

PACKAGE = "beatmon"
KL_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package=PACKAGE)
class KLSparsity(keras.regularizers.Regularizer):
    """KL-divergence sparsity penalty on a layer's activations.

    For each unit, the mean activation over the batch, ``rho_hat``, is held
    to a target firing rate ``target`` by ``weight * sum KL(target || rho_hat)``
    (Bernoulli KL, as in the classic sparse autoencoder). ``rho_hat`` is
    clipped to (1e-6, 1 - 1e-6) so ReLU units, whose mean can exceed 1, keep
    the penalty finite. Keras divides activity penalties by the batch size;
    this one multiplies it back, so ``weight`` is the weight of the summed KL
    term in each batch's loss.
    """

    def __init__(self, target: float = 0.05, weight: float = 1e-3) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"KL sparsity target must lie in (0, 1), got {target}")
        if weight < 0.0:
            raise ValueError(f"KL sparsity weight must be >= 0, got {weight}")
        self.target = float(target)
        self.weight = float(weight)

    def __call__(self, x: Any) -> Any:
        rho_hat = ops.clip(ops.mean(x, axis=0), KL_EPSILON, 1.0 - KL_EPSILON)
        rho = self.target
        kl = rho * ops.log(rho / rho_hat) + (1.0 - rho) * ops.log(
            (1.0 - rho) / (1.0 - rho_hat)
        )
        batch_size = ops.cast(ops.shape(x)[0], kl.dtype)
        return self.weight * ops.sum(kl) * batch_size

    def get_config(self) -> dict[str, Any]:
        return {"target": self.target, "weight": self.weight}
