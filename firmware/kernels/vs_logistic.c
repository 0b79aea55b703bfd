/* LOGISTIC and TANH, int8, as TFLM's reference integer kernels: the input (minus its zero
 * point) scaled into Q4.27, gemmlowp's fixed-point logistic / tanh, rounded to the output
 * (LOGISTIC: scale 1/256, zero point -128; TANH: scale 1/128, zero point 0). Inputs at or
 * beyond +-range_radius saturate. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

static int32_t scaled(const vs_squash_params *p, int32_t x)
{
    return vs_mbqm(x, p->input_mult, p->input_shift);
}

void vs_logistic(const vs_squash_params *p, const int8_t *in, int8_t *out)
{
    for (uint32_t i = 0; i < p->size; ++i) {
        const int32_t x = in[i] - p->in_zero_point;
        int32_t v;
        if (x <= -p->range_radius) {
            v = -128;
        } else if (x >= p->range_radius) {
            v = 127;
        } else {
            const int32_t a = scaled(p, x); /* Q4.27 */
            const int32_t abs = a > 0 ? a : (int32_t)(0u - (uint32_t)a);
            const int32_t positive = vs_one_over_one_plus_x(vs_exp_on_negative_values((int32_t)(0u - (uint32_t)abs), 4));
            const int32_t q0 = a == 0 ? 1 << 30 : (a > 0 ? positive : INT32_MAX - positive);
            v = vs_rdbpot(q0, 23) - 128;
            v = v < -128 ? -128 : (v > 127 ? 127 : v);
        }
        out[i] = (int8_t)v;
    }
}

void vs_tanh(const vs_squash_params *p, const int8_t *in, int8_t *out)
{
    for (uint32_t i = 0; i < p->size; ++i) {
        const int32_t x = in[i] - p->in_zero_point;
        int32_t v;
        if (x <= -p->range_radius) {
            v = -128;
        } else if (x >= p->range_radius) {
            v = 127;
        } else {
            const int32_t a = scaled(p, x); /* Q4.27 */
            const int32_t neg = a < 0 ? a : (int32_t)(0u - (uint32_t)a);
            /* -tanh(-|a|) = (1 - exp(-2|a|)) / (1 + exp(-2|a|)); -2|a| in Q4.27 is -|a| in Q5.26 */
            const int32_t t = vs_one_minus_x_over_one_plus_x(vs_exp_on_negative_values(neg, 5));
            const int32_t q0 = a == 0 ? 0 : (a < 0 ? (int32_t)(0u - (uint32_t)t) : t);
            v = vs_rdbpot(q0, 24);
            v = v < -128 ? -128 : (v > 127 ? 127 : v);
        }
        out[i] = (int8_t)v;
    }
}
