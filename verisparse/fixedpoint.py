"""TFLite's fixed-point requantization, in numpy, bit for bit.

A real multiplier M (for example input_scale * filter_scale / output_scale) is stored as
an int32 significand q in [2^30, 2^31) and a power-of-two exponent: M ~ q * 2^(shift - 31).
TFLM's int8 kernels (and LiteRT's reference CONV_2D) apply it with two roundings:
SaturatingRoundingDoublingHighMul (x * q / 2^31, ties rounded up), then RoundingDivideByPOT
(the result / 2^-shift, ties rounded away from zero). Rounding twice can differ from the
exact product by one: 5 * 0.25 gives 2. The C helper firmware/kernels/vs_fixedpoint.h
computes the same thing.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import VeriSparseError

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
# Exponents MultiplyByQuantizedMultiplier applies without an undefined shift: TFLite's own
# check (shift in [-31, 30]); quantize_multiplier flushes anything below -31 to zero.
SHIFT_MIN, SHIFT_MAX = -31, 30


def quantize_multiplier(m: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: real m >= 0 -> (int32 significand, shift), m ~ q * 2^(shift-31)."""
    if m == 0.0:
        return 0, 0
    frac, shift = math.frexp(m)  # m = frac * 2^shift, frac in [0.5, 1)
    q = math.floor(frac * (1 << 31) + 0.5)  # std::round, half away from zero (frac > 0)
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:  # too small to represent: TFLite flushes it to zero
        return 0, 0
    return int(q), int(shift)


def quantize_multipliers(ms) -> tuple[np.ndarray, np.ndarray]:
    """quantize_multiplier over an array: (int32 significands, int32 shifts)."""
    pairs = [quantize_multiplier(float(m)) for m in np.ravel(ms)]
    return np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32)


def checked_multipliers(ms, where: str) -> tuple[np.ndarray, np.ndarray]:
    """quantize_multipliers for multipliers derived from a model's scales, refusing the ones
    the fixed-point arithmetic cannot apply: not finite, negative, or 2^30 and over (a shift
    over TFLite's limit of 30; from 32 up the C helper's shift would be undefined). Such
    multipliers come from corrupt or inconsistent scales."""
    ms = np.asarray(ms, np.float64).ravel()
    usable = np.isfinite(ms) & (ms >= 0)
    q, shift = quantize_multipliers(np.where(usable, ms, 0.0))
    bad = ~usable | (shift > SHIFT_MAX)  # the shift, not m: rounding can carry m just below 2^30 up to it
    if bad.any():
        raise VeriSparseError(f"{where}: requantization multiplier {ms[bad][0]:g} (a ratio of the op's scales) "
                              f"is outside [0, 2^{SHIFT_MAX}); the model's scales are corrupt or "
                              "inconsistent: re-export the model")
    return q, shift


def _wrap32(x):
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier, vectorised with broadcasting, in int64.

    x holds int32 values (accumulators); the result is int64 holding int32 values. As in the
    C code, x * 2^left_shift wraps to int32 (only reachable when the multiplier exceeds 1)."""
    x = np.asarray(x, np.int64)
    q = np.asarray(multiplier, np.int64)
    shift = np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    a = _wrap32(x << left)
    # SaturatingRoundingDoublingHighMul: (a*q + nudge) / 2^31, C division truncating toward zero.
    ab = a * q
    s = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(s >= 0, s >> 31, -((-s) >> 31))
    high = np.where((a == INT32_MIN) & (q == INT32_MIN), INT32_MAX, high)
    # RoundingDivideByPOT: arithmetic shift, plus one when the remainder is past half.
    mask = (np.int64(1) << right) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> right) + ((high & mask) > threshold)


def activation_range(act: str, scale: float, zero_point: int, where: str) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized for int8: the clamp a fused activation
    becomes, zero_point + round_half_away(f / scale) in float32 as TFLite computes it."""
    s, zp = np.float32(scale), int(zero_point)

    def q(f):
        with np.errstate(over="ignore"):  # a tiny scale gives inf, which the clamp below and the range absorb
            v = np.float32(f) / s
            r = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
        return zp + int(np.clip(r, -2.0 ** 40, 2.0 ** 40))

    ranges = {"NONE": (-128, 127), "RELU": (max(-128, q(0.0)), 127), "RELU6": (max(-128, q(0.0)), min(127, q(6.0))),
              "RELU_N1_TO_1": (max(-128, q(-1.0)), min(127, q(1.0)))}
    if act not in ranges:
        raise VeriSparseError(f"{where}: fused activation {act} is not supported ({', '.join(ranges)} are)")
    return ranges[act]
