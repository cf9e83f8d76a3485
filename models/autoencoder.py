"""Autoencoder variants, each built from one small description.

A variant is a :class:`ModelSpec`: optional strided convolutions at the
front, the widths of the dense encoder layers, and what acts only in
training (noise on the input, penalties on the encoder). The decoder mirrors
the encoder, and the output is linear with as many samples as the beat.
Adding a variant means adding one entry to :data:`VARIANTS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from beatmon.errors import BeatmonError

if TYPE_CHECKING:
    import keras

REFERENCE_WIDTHS: tuple[int, ...] = (256, 128, 64, 32)
CONV_STRIDE = 2


@dataclass(frozen=True)
class ModelSpec:
    """The description one autoencoder variant is built from.

    ``encoder_widths`` lists the dense encoder layers, outermost first; the
    last is the bottleneck. ``conv_filters``, when not empty, puts that many
    strided 1-D convolutions (``conv_kernel`` samples wide, stride 2) in
    front of the dense encoder, and mirrors them with transposed
    convolutions in the decoder. ``input_noise_std`` adds Gaussian noise of
    that standard deviation (scaled units) to the input while training only.
    ``activity_l1`` is the weight of an L1 penalty on the activations of
    every dense encoder layer; ``kl_weight`` (with ``kl_target``) that of a
    KL-divergence sparsity penalty on them. 0 turns each off.
    """

    name: str
    summary: str
    encoder_widths: tuple[int, ...] = REFERENCE_WIDTHS
    activity_l1: float = 0.0
    activation: str = "relu"
    conv_filters: tuple[int, ...] = ()
    conv_kernel: int = 7
    input_noise_std: float = 0.0
    kl_target: float = 0.05
    kl_weight: float = 0.0

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """Hidden decoder widths: the encoder mirrored, without the bottleneck."""
        return tuple(reversed(self.encoder_widths[:-1]))

    def describe(self) -> dict[str, Any]:
        """The fields that shape the model, for a bundle's metadata."""
        return {
            "encoder_widths": list(self.encoder_widths),
            "activity_l1": self.activity_l1,
            "activation": self.activation,
            "conv_filters": list(self.conv_filters),
            "conv_kernel": self.conv_kernel,
            "input_noise_std": self.input_noise_std,
            "kl_target": self.kl_target,
            "kl_weight": self.kl_weight,
        }


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
    "conv": ModelSpec(
        name="conv",
        summary="1-D convolutional autoencoder: two stride-2 convolutions "
        "(16, 32 filters, width 7), a 32-unit dense bottleneck, transposed "
        "convolutions back",
        encoder_widths=(32,),
        conv_filters=(16, 32),
    ),
    "denoising": ModelSpec(
        name="denoising",
        summary="dense autoencoder trained on inputs with Gaussian noise "
        "(sd 0.2, scaled units), clean at serving time",
        input_noise_std=0.2,
    ),
    "kl-sparse": ModelSpec(
        name="kl-sparse",
        summary="dense autoencoder with a KL-divergence sparsity penalty "
        "(target 0.05, weight 1e-4) on the encoder",
        kl_weight=1e-4,
    ),
}


def get_spec(name: str) -> ModelSpec:
    """Return the variant called ``name``, or fail with the list of known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        known = ", ".join(sorted(VARIANTS))
        raise BeatmonError(f"unknown model {name!r}; choose one of: {known}") from None


def _activity_penalty(spec: ModelSpec) -> Any:
    import keras

    from models.layers import KLSparsity

    if spec.kl_weight > 0:
        return KLSparsity(spec.kl_target, spec.kl_weight)
    if spec.activity_l1 > 0:
        return keras.regularizers.L1(spec.activity_l1)
    return None


def build(spec: ModelSpec, length: int, *, with_penalties: bool = True) -> keras.Model:
    """Build the variant for beats of ``length`` samples.

    ``with_penalties=False`` leaves out the activity penalties. They act only
    during training, so such a copy computes the same outputs and is what
    inference and export use.
    """
    import keras

    penalty = _activity_penalty(spec) if with_penalties else None
    inputs = keras.Input(shape=(length,), name="beat")
    x = inputs
    if spec.input_noise_std > 0:
        x = keras.layers.GaussianNoise(spec.input_noise_std, name="input_noise")(x)

    # Strided convolutions halve the beat, rounding up, once per filter count.
    steps = length
    if spec.conv_filters:
        x = keras.layers.Reshape((length, 1), name="as_channels")(x)
        for i, filters in enumerate(spec.conv_filters):
            x = keras.layers.Conv1D(
                filters,
                spec.conv_kernel,
                strides=CONV_STRIDE,
                padding="same",
                activation=spec.activation,
                name=f"conv_{i}",
            )(x)
            steps = -(-steps // CONV_STRIDE)
        if spec.encoder_widths:
            x = keras.layers.Flatten(name="flatten")(x)

    for i, width in enumerate(spec.encoder_widths):
        x = keras.layers.Dense(
            width,
            activation=spec.activation,
            activity_regularizer=penalty,
            name=f"encoder_{i}",
        )(x)
    for i, width in enumerate(spec.decoder_widths):
        x = keras.layers.Dense(width, activation=spec.activation, name=f"decoder_{i}")(
            x
        )

    if not spec.conv_filters:
        outputs = keras.layers.Dense(
            length, activation="linear", name="reconstruction"
        )(x)
        return keras.Model(inputs, outputs, name=f"beatmon_{spec.name}")

    if spec.encoder_widths:
        channels = spec.conv_filters[-1]
        x = keras.layers.Dense(
            steps * channels, activation=spec.activation, name="decoder_expand"
        )(x)
        x = keras.layers.Reshape((steps, channels), name="decoder_steps")(x)
    for i, filters in enumerate(reversed(spec.conv_filters)):
        x = keras.layers.Conv1DTranspose(
            filters,
            spec.conv_kernel,
            strides=CONV_STRIDE,
            padding="same",
            activation=spec.activation,
            name=f"deconv_{i}",
        )(x)
    x = keras.layers.Conv1D(
        1, spec.conv_kernel, padding="same", activation="linear", name="to_samples"
    )(x)
    surplus = steps * CONV_STRIDE ** len(spec.conv_filters) - length
    if surplus:
        x = keras.layers.Cropping1D((0, surplus), name="crop")(x)
    outputs = keras.layers.Reshape((length,), name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=f"beatmon_{spec.name}")
