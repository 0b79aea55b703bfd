/* SOFTMAX, int8 in and int8 out (output scale 1/256, zero point -128), along the last
 * dimension, with TFLM's fixed-point arithmetic and no lookup table: each difference to the
 * row's maximum is scaled by beta * input_scale into Q5.26, exp() is evaluated in fixed
 * point, the Q12.19 sum of exps is inverted by Newton-Raphson, and each exp times that
 * reciprocal is rounded to the output. Differences below diff_min give exactly 0. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

/* exp(beta * input_scale * diff) in Q0, for a difference diff in [diff_min, 0] */
static int32_t exp_of_diff(const vs_softmax_params *p, int32_t diff)
{
    const int32_t scaled = vs_srdhm((int32_t)((uint32_t)diff << p->input_left_shift), p->input_mult);
    return vs_exp_on_negative_values(scaled, 5);
}

void vs_softmax(const vs_softmax_params *p, const int8_t *in, int8_t *out)
{
    for (uint32_t row = 0; row < p->outer; ++row, in += p->depth, out += p->depth) {
        int32_t max = -128;
        for (uint32_t c = 0; c < p->depth; ++c) max = in[c] > max ? in[c] : max;
        int32_t sum = 0; /* Q12.19; depth <= 4096 keeps it below 2^31 */
        for (uint32_t c = 0; c < p->depth; ++c) {
            const int32_t diff = in[c] - max;
            if (diff >= p->diff_min) sum += vs_rdbpot(exp_of_diff(p, diff), 12);
        }
        /* 1 / sum: sum = 2^bits_over_unit * (1 + x) with x in [0, 1) */
        const int32_t headroom = __builtin_clz((uint32_t)sum);
        const int32_t bits_over_unit = 12 - headroom;
        const int32_t x = (int32_t)(((uint32_t)sum << headroom) - (UINT32_C(1) << 31));
        const int32_t scale = vs_one_over_one_plus_x(x);
        const int32_t exponent = bits_over_unit + 31 - 8;
        for (uint32_t c = 0; c < p->depth; ++c) {
            const int32_t diff = in[c] - max;
            int32_t v = -128;
            if (diff >= p->diff_min) {
                v = vs_rdbpot(vs_srdhm(scale, exp_of_diff(p, diff)), exponent) - 128;
                v = v > 127 ? 127 : (v < -128 ? -128 : v);
            }
            out[c] = (int8_t)v;
        }
    }
}
