"""Small full-int8 .tflite models made with Keras, covering every op the firmware supports.

Inputs have a fixed batch size of 1: with a dynamic batch, Keras 3 turns Flatten into
SHAPE/STRIDED_SLICE/PACK ops that compute the reshape target at run time.

Each builder returns the flatbuffer bytes; weights are random with a fixed seed and some
weights are zeroed so the sparse kernels are exercised too.

Each builder converts once per test session (functools.cache): several test modules use the
same models, and a conversion costs seconds of TensorFlow. The bytes are immutable."""
from __future__ import annotations

from functools import cache

import numpy as np


def _convert(model, in_shape, int8_io=True, per_tensor_dense=False, seed=0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    calib = rng.uniform(-1, 1, (64, *in_shape)).astype(np.float32)

    def representative():
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    # per-tensor FULLY_CONNECTED weights: one multiplier for the layer (TFLM's per-tensor path)
    conv._experimental_disable_per_channel_quantization_for_dense_layers = per_tensor_dense
    if int8_io:
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    return conv.convert()


def _perturb(model, fraction, seed=0):
    """Zero a random fraction of every kernel, so sparse storage pays off, and give biases
    random values (Keras starts them at zero and the converter drops all-zero biases)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws and ws[0].ndim >= 2 and ws[0].size >= 64:
            ws[0] = ws[0] * (rng.random(ws[0].shape) >= fraction)
        if len(ws) == 2:
            ws[1] = rng.normal(0, 0.1, ws[1].shape).astype(np.float32)
        layer.set_weights(ws)


@cache
def keras_cnn() -> bytes:
    """CONV_2D (SAME, stride 2, RELU6; dilation 2), DEPTHWISE_CONV_2D (multiplier 2, RELU),
    MAX_POOL_2D, AVERAGE_POOL_2D (SAME, partial windows), RESHAPE, FULLY_CONNECTED; int8 in/out."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([
        layers.Input((9, 9, 2), batch_size=1),
        layers.Conv2D(8, 3, strides=2, padding="same", activation="relu6"),
        layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu"),
        layers.MaxPooling2D(2, strides=1, padding="valid"),
        layers.Conv2D(24, 2, padding="valid", dilation_rate=2, activation="relu"),
        layers.AveragePooling2D(2, strides=2, padding="same"),
        layers.Flatten(),
        layers.Dense(10),
    ])
    _perturb(model, 0.85)
    return _convert(model, (9, 9, 2))


@cache
def keras_residual() -> bytes:
    """ADD (two branches, different scales), float in/out (QUANTIZE and DEQUANTIZE at the ends),
    and a FULLY_CONNECTED with per-tensor weight scale."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(2)
    x = inp = layers.Input((8, 8, 3), batch_size=1)
    a = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    b = layers.Conv2D(8, 3, padding="same")(a)
    x = layers.Add()([a, b])
    x = layers.ReLU()(x)
    x = layers.Conv2D(6, 3, strides=2, padding="valid", dilation_rate=1, activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(5)(x)
    model = tf.keras.Model(inp, x)
    _perturb(model, 0.0)
    return _convert(model, (8, 8, 3), int8_io=False, per_tensor_dense=True)


@cache
def keras_mlp() -> bytes:
    """FULLY_CONNECTED only, 90% of the weights zero: sparse FC storage."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(3)
    model = tf.keras.Sequential([layers.Input((300,), batch_size=1), layers.Dense(64, activation="relu"),
                                 layers.Dense(32, activation="relu"), layers.Dense(10)])
    _perturb(model, 0.9)
    return _convert(model, (300,))


@cache
def keras_float() -> bytes:
    """A float model (no quantization), which the firmware must refuse."""
    import tensorflow as tf
    from tensorflow.keras import layers

    model = tf.keras.Sequential([layers.Input((4,)), layers.Dense(3)])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


@cache
def keras_hybrid() -> bytes:
    """A dynamic-range ("hybrid") model: int8 weights, float activations; refused too."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(5)
    model = tf.keras.Sequential([layers.Input((64,), batch_size=1), layers.Dense(32), layers.Dense(3)])
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: weights-only int8
    return conv.convert()


@cache
def keras_softmax() -> bytes:
    """A tiny int8 model ending in SOFTMAX."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(4)
    model = tf.keras.Sequential([layers.Input((4,)), layers.Dense(3), layers.Softmax()])
    return _convert(model, (4,))


@cache
def keras_unsupported() -> bytes:
    """An int8 model with TRANSPOSE (Keras' Permute), an op the firmware does not support."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(4)
    model = tf.keras.Sequential([layers.Input((4, 3), batch_size=1), layers.Permute((2, 1)), layers.Flatten(),
                                 layers.Dense(3)])
    return _convert(model, (4, 3))


@cache
def keras_heads() -> bytes:
    """Concatenate (two branches), standalone RELU, RELU6 and LEAKY_RELU, GlobalAveragePooling2D
    (MEAN over height and width), SQUEEZE and EXPAND_DIMS, SOFTMAX at the end."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(6)
    x = inp = layers.Input((6, 6, 3), batch_size=1)
    a = layers.Conv2D(6, 3, padding="same")(x)
    b = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Concatenate()([a, b, x])  # the input itself at its own scale: a requantizing QUANTIZE
    x = layers.ReLU()(x)
    c = layers.Conv2D(4, 1)(x)
    c = layers.LeakyReLU(negative_slope=0.2)(c)
    d = layers.Conv2D(4, 1)(x)
    x = layers.Concatenate(axis=2)([c, d])
    x = layers.ReLU(6.0)(x)
    x = layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = layers.Lambda(lambda t: tf.squeeze(t, axis=[1, 2]))(x)
    x = layers.Lambda(lambda t: tf.expand_dims(t, 1))(x)
    x = layers.Conv1D(5, 1)(x)
    x = layers.Flatten()(x)
    x = layers.Softmax()(x)
    model = tf.keras.Model(inp, x)
    _perturb(model, 0.0)
    return _convert(model, (6, 6, 3))


@cache
def keras_dynamic_batch() -> bytes:
    """Converted with a dynamic batch (no batch_size): Flatten becomes SHAPE -> STRIDED_SLICE ->
    PACK -> RESHAPE; with DepthwiseConv2D, GlobalAveragePooling2D (then SQUEEZE), Concatenate and Softmax."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(7)
    x = inp = layers.Input((8, 8, 2))
    a = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu")(x)
    g = layers.GlobalAveragePooling2D(keepdims=True)(a)
    g = layers.Lambda(lambda t: tf.squeeze(t, axis=[1, 2]))(g)
    f = layers.Flatten()(layers.Conv2D(3, 3, strides=2, activation="relu")(a))
    x = layers.Concatenate()([g, f])
    x = layers.Dense(6)(x)
    x = layers.Softmax()(x)
    model = tf.keras.Model(inp, x)
    _perturb(model, 0.0)
    return _convert(model, (8, 8, 2))


@cache
def keras_elementwise() -> bytes:
    """MUL (same shape, broadcast from a squeeze-excite MEAN, and by a constant), SUB, MAXIMUM,
    MINIMUM, LOGISTIC, TANH, HARD_SWISH."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(8)
    x = inp = layers.Input((5, 5, 3), batch_size=1)
    a = layers.Conv2D(4, 3, padding="same")(x)
    b = layers.Conv2D(4, 1)(x)
    m = layers.Multiply()([a, b])
    d = layers.Subtract()([a, b])
    hi = layers.Activation("sigmoid")(layers.Maximum()([m, d]))
    lo = layers.Activation("tanh")(layers.Minimum()([m, d]))
    se = layers.Activation("sigmoid")(layers.GlobalAveragePooling2D(keepdims=True)(a))
    gated = layers.Multiply()([a, se])
    scaled = layers.Lambda(lambda t: t * np.array([0.5, -1.5, 2.0, 0.25], np.float32))(b)
    hs = layers.Activation("hard_swish")(a)
    x = layers.Concatenate()([hi, lo, gated, scaled, hs])
    x = layers.Flatten()(x)
    x = layers.Dense(6)(x)
    model = tf.keras.Model(inp, x)
    _perturb(model, 0.0)
    return _convert(model, (5, 5, 3))


KERAS_MODELS = {"keras_cnn": keras_cnn, "keras_residual": keras_residual, "keras_mlp": keras_mlp,
                "keras_heads": keras_heads, "keras_dynamic_batch": keras_dynamic_batch,
                "keras_elementwise": keras_elementwise}


@cache
def keras_dsp_edges() -> bytes:
    """The DSP kernels' edges: depthwise layers of 6 channels (a group of four and two left
    over) with stride, dilation and padding on every border, a convolution whose patch (54)
    and output channels (6) are not multiples of four, a strided 1x1 convolution, an average
    pool of 8 channels with clipped windows, and a fully connected layer of 7."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(11)
    x = inp = layers.Input((9, 7, 6), batch_size=1)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu")(x)
    x = layers.DepthwiseConv2D(3, dilation_rate=2, padding="same")(x)
    x = layers.Conv2D(6, 3, padding="same", activation="relu6")(x)
    x = layers.Conv2D(8, 1, strides=2)(x)
    x = layers.AveragePooling2D(2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(7)(x)
    model = tf.keras.Model(inp, x)
    _perturb(model, 0.3)
    return _convert(model, (9, 7, 6))


@cache
def keras_cnn_4layer(widths: tuple[int, int, int], zero_fraction: float, seed: int = 0) -> bytes:
    """cnn_4layer as bench/firmware_size.py trains it on mnist5k (two 4x4 convolutions of stride 2,
    two dense layers, 10 classes), at the channel widths structured pruning leaves it (widths),
    with that fraction of every kernel zero: a few tenths leave every layer dense, as int8
    rounding does to the bench's structured models; 0.99 stores every layer sparse."""
    import tensorflow as tf
    from tensorflow.keras import layers

    tf.keras.utils.set_random_seed(seed)
    c1, c2, hidden = widths
    model = tf.keras.Sequential([
        layers.Input((28, 28, 1), batch_size=1),
        layers.Conv2D(c1, 4, strides=2, padding="same", activation="relu"),
        layers.Conv2D(c2, 4, strides=2, padding="same", activation="relu"),
        layers.Flatten(),
        layers.Dense(hidden, activation="relu"),
        layers.Dense(10),
    ])
    _perturb(model, zero_fraction, seed)
    return _convert(model, (28, 28, 1), seed=seed)
