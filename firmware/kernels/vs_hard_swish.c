/* HARD_SWISH, int8, as TFLM's reference kernel computes x * relu6(x + 3) / 6 in int16:
 * the input on a 128x finer scale, a "reluish" factor in [0, 1] from a saturating
 * rescale of it, their product rescaled to the output. Every int16 step (rounding and
 * truncating high multiplies, saturating shifts) is reproduced. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

/* v * 2^amount saturated to int16 (the reference's SaturatingLeftShift, in int64) */
static int32_t sat_shl16(int32_t v, int32_t amount)
{
    const int64_t r = (int64_t)v * ((int64_t)1 << amount);
    return r > INT16_MAX ? INT16_MAX : (r < INT16_MIN ? INT16_MIN : (int32_t)r);
}

/* gemmlowp's int16 SaturatingRoundingDoublingHighMul: (a * b + nudge) / 2^15, truncating */
static int32_t srdhm16(int32_t a, int32_t b)
{
    if (a == INT16_MIN && b == INT16_MIN) return INT16_MAX;
    const int32_t ab = a * b;
    return (ab + (ab >= 0 ? 1 << 14 : 1 - (1 << 14))) / (1 << 15);
}

void vs_hard_swish(const vs_hard_swish_params *p, const int8_t *in, int8_t *out)
{
    for (uint32_t i = 0; i < p->size; ++i) {
        const int32_t hires = (in[i] - p->in_zero_point) * 128; /* |x| <= 255 * 128 fits int16 */
        const int32_t preshift_out = srdhm16(hires, p->out_mult);
        int32_t reluish = hires;
        if (p->reluish_shift > 0) reluish = sat_shl16(reluish, p->reluish_shift - 1);
        reluish = srdhm16(reluish, p->reluish_mult);
        if (p->reluish_shift > 0) reluish = sat_shl16(reluish, 1);
        if (p->reluish_shift < 0) reluish = vs_rdbpot(reluish, -p->reluish_shift);
        reluish = (reluish + (1 << 15)) >> 1; /* [-1, 1] to [0, 1] */
        const int32_t product = (reluish * preshift_out) / (1 << 15); /* truncating, never saturates */
        int32_t v = vs_rdbpot(product, -p->out_shift) + p->out_zero_point;
        v = v > INT16_MAX ? v - 65536 : (v < INT16_MIN ? v + 65536 : v); /* the reference adds it in int16 */
        out[i] = (int8_t)(v > 127 ? 127 : (v < -128 ? -128 : v));
    }
}
