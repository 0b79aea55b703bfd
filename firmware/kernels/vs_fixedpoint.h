/* The one fixed-point helper: TFLite's MultiplyByQuantizedMultiplier, bit for bit.
 *
 * A real multiplier M is stored as an int32 significand `mult` in [2^30, 2^31) and an
 * exponent `shift`, M ~ mult * 2^(shift - 31). As in TFLM (and verisparse/fixedpoint.py)
 * the product is rounded twice: SaturatingRoundingDoublingHighMul (ties up), then
 * RoundingDivideByPOT (ties away from zero). */
#ifndef VS_FIXEDPOINT_H
#define VS_FIXEDPOINT_H

#include <stdint.h>

static inline int32_t vs_mbqm(int32_t x, int32_t mult, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    /* x * 2^left wraps like TFLite's int32 multiply (only reachable when M > 1) */
    const int32_t a = (int32_t)((uint32_t)x << left);
    int32_t high;
    if (a == INT32_MIN && mult == INT32_MIN) {
        high = INT32_MAX; /* the one product that does not fit */
    } else {
        /* TFLite writes (ab + (ab >= 0 ? 2^30 : 1 - 2^30)) / 2^31 with truncating division,
         * which is floor((ab + 2^30) / 2^31) for every ab: one add and an arithmetic shift
         * (what gcc and the other Arm compilers do for >> of a negative value). */
        const int64_t ab = (int64_t)a * mult;
        high = (int32_t)((ab + (INT64_C(1) << 30)) >> 31);
    }
    const int32_t mask = (int32_t)((UINT32_C(1) << right) - 1);
    const int32_t threshold = (mask >> 1) + (high < 0);
    return (high >> right) + ((high & mask) > threshold);
}

/* Requantize an int32 accumulator to int8: scale, add the output zero point, clamp to the
 * fused activation's range (which lies inside [-128, 127]). */
static inline int8_t vs_requantize(int32_t acc, int32_t mult, int32_t shift, int32_t out_offset,
                                   int32_t act_min, int32_t act_max)
{
    int32_t v = vs_mbqm(acc, mult, shift) + out_offset;
    v = v < act_min ? act_min : v;
    v = v > act_max ? act_max : v;
    return (int8_t)v;
}

#endif
