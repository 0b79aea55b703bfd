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

/* vs_mbqm for a multiplier that is not negative, as every multiplier lower.py computes is
 * (it refuses any outside [0, 2^31)): the one product that saturates needs mult = INT32_MIN,
 * so its test is left out, and with a right shift (shift < 0, M < 1/2) the two roundings
 * fold into one 64-bit multiply-accumulate and one shift:
 *   high = floor((x * mult + 2^30) / 2^31), result = (high + 2^(r-1) - (high < 0)) >> r
 *   so result = floor((x * mult + 2^30 + (2^(r-1) - neg) * 2^31) / 2^(31+r)), r = -shift,
 * where neg = (high < 0) equals (x < 0) whenever it matters: mult is 0 or at least 2^30, and
 * the x < 0 with high = 0 cases give 0 either way (the added term stays below 2^(30+r)).
 * The top word of the 64-bit sum, shifted by r - 1, is the result. */
static inline int32_t vs_mbqm_right(int32_t x, int32_t mult, int32_t r1)
{
    /* r1 = -shift - 1 >= 0 */
    const uint32_t c = (UINT32_C(1) << r1) - ((uint32_t)x >> 31);
    const int64_t bias = (int64_t)(((uint64_t)(c >> 1) << 32) | ((c & 1u) << 31) | (UINT32_C(1) << 30));
    const int64_t z = (int64_t)x * mult + bias;
    return (int32_t)(z >> 32) >> r1;
}

/* shift >= 0 (M >= 1/2): no right shift, one rounding. Rare in convolutions (their output scale
 * is usually far above the input's times the weights'), so out of line: flash. A kernel file whose
 * multipliers are all below 1/2 (the generator knows) may define VS_MBQM_LEFT 0 before including
 * this header, and the path is left out of vs_mbqm_pos and vs_requantize2. */
#ifndef VS_MBQM_LEFT
#define VS_MBQM_LEFT 1
#endif
static __attribute__((noinline, unused)) int32_t vs_mbqm_left(int32_t x, int32_t mult, int32_t shift)
{
    const int64_t ab = (int64_t)(int32_t)((uint32_t)x << shift) * mult;
    return (int32_t)((ab + (INT64_C(1) << 30)) >> 31);
}

static inline int32_t vs_mbqm_pos(int32_t x, int32_t mult, int32_t shift)
{
    if (!VS_MBQM_LEFT || __builtin_expect(shift < 0, 1)) return vs_mbqm_right(x, mult, -shift - 1); /* M < 1/2 */
    return vs_mbqm_left(x, mult, shift);
}

/* Requantize an int32 accumulator to int8: scale, add the output zero point, clamp to the
 * fused activation's range (which lies inside [-128, 127]). */
static inline int8_t vs_clamp8(int32_t v, int32_t act_min, int32_t act_max)
{
    v = v < act_min ? act_min : v;
    v = v > act_max ? act_max : v;
    return (int8_t)v;
}

static inline int8_t vs_requantize(int32_t acc, int32_t mult, int32_t shift, int32_t out_offset,
                                   int32_t act_min, int32_t act_max)
{
    return vs_clamp8(vs_mbqm_pos(acc, mult, shift) + out_offset, act_min, act_max);
}

/* vs_requantize of two accumulators of one output channel (two pixels): the multiplier's loads,
 * the rounding constant and the test of the shift's sign serve both */
static inline void vs_requantize2(int32_t a, int32_t b, int32_t mult, int32_t shift, int32_t out_offset,
                                  int32_t act_min, int32_t act_max, int8_t *out_a, int8_t *out_b)
{
    int32_t qa, qb;
    if (!VS_MBQM_LEFT || __builtin_expect(shift < 0, 1)) {
        qa = vs_mbqm_right(a, mult, -shift - 1);
        qb = vs_mbqm_right(b, mult, -shift - 1);
    } else {
        qa = vs_mbqm_left(a, mult, shift);
        qb = vs_mbqm_left(b, mult, shift);
    }
    *out_a = vs_clamp8(qa + out_offset, act_min, act_max);
    *out_b = vs_clamp8(qb + out_offset, act_min, act_max);
}

/* gemmlowp's fixed-point primitives on int32, as TFLM's SOFTMAX, LOGISTIC and TANH use them.
 * A Qm value holds m integer bits and 31 - m fractional bits. Sums wrap like the int32
 * adds of the reference code (they never overflow on the paths the kernels take). */
static inline int32_t vs_wrap_add(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a + (uint32_t)b);
}

/* a * b / 2^31, ties up; -1 * -1 saturates (gemmlowp's SaturatingRoundingDoublingHighMul) */
static inline int32_t vs_srdhm(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    return (int32_t)(((int64_t)a * b + (INT64_C(1) << 30)) >> 31);
}

/* x / 2^e, ties away from zero (RoundingDivideByPOT), 0 <= e <= 31 */
static inline int32_t vs_rdbpot(int32_t x, int32_t e)
{
    const int32_t mask = (int32_t)((UINT32_C(1) << e) - 1);
    const int32_t threshold = (mask >> 1) + (x < 0);
    return (x >> e) + ((x & mask) > threshold);
}

/* x * 2^e, saturating, 0 < e < 31 (SaturatingRoundingMultiplyByPOT with a positive exponent) */
static inline int32_t vs_sat_shl(int32_t x, int32_t e)
{
    const int32_t threshold = (int32_t)((UINT32_C(1) << (31 - e)) - 1);
    if (x > threshold) return INT32_MAX;
    if (x < -threshold) return INT32_MIN;
    return (int32_t)((uint32_t)x << e);
}

/* exp(a) for a Q0 value a in [-1/4, 0): Taylor series around -1/8; returns Q0 */
static inline int32_t vs_exp_quarter(int32_t a)
{
    const int32_t exp_minus_eighth = 1895147668, one_third = 715827883;
    const int32_t x = vs_wrap_add(a, 1 << 28);
    const int32_t x2 = vs_srdhm(x, x), x3 = vs_srdhm(x2, x), x4 = vs_srdhm(x2, x2);
    const int32_t x4_over_4 = vs_rdbpot(x4, 2);
    const int32_t poly = vs_rdbpot(vs_wrap_add(vs_srdhm(vs_wrap_add(x4_over_4, x3), one_third), x2), 1);
    return vs_wrap_add(exp_minus_eighth, vs_srdhm(exp_minus_eighth, vs_wrap_add(x, poly)));
}

/* exp(a) for a Q(int_bits) value a <= 0, 0 < int_bits <= 5; returns Q0 (exp(0) is 2^31 - 1).
 * a = -(k/4 + r) with r in (0, 1/4]: exp(-r) from the series, then one factor exp(-2^j)
 * per set bit of the remainder (gemmlowp's exp_on_negative_values). */
static inline int32_t vs_exp_on_negative_values(int32_t a, int32_t int_bits)
{
    static const int32_t factor[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t frac_bits = 31 - int_bits;
    const int32_t quarter = 1 << (frac_bits - 2);
    const int32_t a_mod_quarter_minus_quarter = (int32_t)((uint32_t)(a & (quarter - 1)) - (uint32_t)quarter);
    int32_t result = vs_exp_quarter(vs_sat_shl(a_mod_quarter_minus_quarter, int_bits));
    const int32_t remainder = (int32_t)((uint32_t)a_mod_quarter_minus_quarter - (uint32_t)a);
    for (int32_t j = -2; j <= 4 && j < int_bits; ++j)
        if (remainder & (int32_t)(UINT32_C(1) << (frac_bits + j))) result = vs_srdhm(result, factor[j + 2]);
    return a == 0 ? INT32_MAX : result;
}

/* 2 / (1 + a) in Q2 for a Q0 value a in [0, 1): Newton-Raphson on the half denominator */
static inline int32_t vs_two_over_one_plus_x_q2(int32_t a)
{
    const int32_t c48_17 = 1515870810, cm32_17 = -1010580540, one_q2 = 1 << 29;
    const int64_t sum = (int64_t)a + INT32_MAX;
    const int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = vs_wrap_add(c48_17, vs_srdhm(half_den, cm32_17));
    for (int i = 0; i < 3; ++i) {
        const int32_t one_minus = (int32_t)((uint32_t)one_q2 - (uint32_t)vs_srdhm(half_den, x));
        x = vs_wrap_add(x, vs_sat_shl(vs_srdhm(x, one_minus), 2));
    }
    return x;
}

/* 1 / (1 + a) for a Q0 value a in [0, 1); returns Q0 */
static inline int32_t vs_one_over_one_plus_x(int32_t a)
{
    return vs_sat_shl(vs_two_over_one_plus_x_q2(a), 1);
}

/* (1 - a) / (1 + a) for a Q0 value a in [0, 1); returns Q0 */
static inline int32_t vs_one_minus_x_over_one_plus_x(int32_t a)
{
    return vs_sat_shl((int32_t)((uint32_t)vs_two_over_one_plus_x_q2(a) - (UINT32_C(1) << 29)), 2);
}

#endif
