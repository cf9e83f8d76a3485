"""Autoencoder variants, each built from one small description.

A variant is a :class:`ModelSpec`: the widths of the encoder layers and the
penalties on them. The decoder mirrors the encoder, and the output layer is
linear with as many units as the beat has samples. Adding a variant means
adding one entry to :data:`VARIANTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from beatmon.errors import BeatmonError

if TYPE_CHECKING:
    import keras

REFERENCE_WIDTHS: tuple[int, ...] = (256, 128, 64, 32)


@dataclass(frozen=True)
class ModelSpec:
    """The description one autoencoder variant is built from.

    ``encoder_widths`` lists the encoder layers, outermost first; the last is
    the bottleneck. ``activity_l1`` is the weight of an L1 penalty on the
    activations of every encoder layer (0 turns it off).
    """

    name: str
    summary: str
    encoder_widths: tuple[int, ...] = REFERENCE_WIDTHS
    activity_l1: float = 0.0
    activation: str = "relu"

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """Hidden decoder widths: the encoder mirrored, without the bottleneck."""
        return tuple(reversed(self.encoder_widths[:-1]))


VARIANTS: dict[str, ModelSpec] = {
    "dense": ModelSpec(
        name="dense",
        summary="reference dense autoencoder 256-128-64-32-64-128-256",
    ),
    "sparse": ModelSpec(
        name="sparse",
        summary="dense autoencoder with an L1 activity penalty (1e-4) on the encoder",
        activity_l1=1e-4,
    ),
}


def get_spec(name: str) -> ModelSpec:
    """Return the variant called ``name``, or fail with the list of known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        known = ", ".join(sorted(VARIANTS))
        raise BeatmonError(f"unknown model {name!r}; choose one of: {known}") from None


def build(spec: ModelSpec, length: int, *, with_penalties: bool = True) -> keras.Model:
    """Build the variant for beats of ``length`` samples.

    ``with_penalties=False`` leaves out the activity penalties. They act only
    during training, so such a copy computes the same outputs and is what
    inference and export use.
    """
    import keras

    regularizer = (
        keras.regularizers.L1(spec.activity_l1)
        if with_penalties and spec.activity_l1 > 0
        else None
    )
    inputs = keras.Input(shape=(length,), name="beat")
    x = inputs
    for i, width in enumerate(spec.encoder_widths):
        x = keras.layers.Dense(
            width,
            activation=spec.activation,
            activity_regularizer=regularizer,
            name=f"encoder_{i}",
        )(x)
    for i, width in enumerate(spec.decoder_widths):
        x = keras.layers.Dense(width, activation=spec.activation, name=f"decoder_{i}")(
            x
        )
    outputs = keras.layers.Dense(length, activation="linear", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=f"beatmon_{spec.name}")
