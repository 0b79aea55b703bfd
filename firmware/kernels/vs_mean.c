/* MEAN over a run of adjacent dimensions (global average pooling: height and width of NHWC),
 * as TFLM's int8 MEAN computes it: the int32 sum minus count * input zero point, scaled by
 * in_scale / out_scale / count in one fixed-point multiplier. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

void vs_mean(const vs_mean_params *p, const int8_t *in, int8_t *out)
{
    for (uint32_t o = 0; o < p->outer; ++o, in += p->reduce * p->inner) {
        for (uint32_t i = 0; i < p->inner; ++i) {
            int32_t sum = p->sum_offset; /* -(input zero point) * reduce */
            for (uint32_t r = 0; r < p->reduce; ++r) sum += in[r * p->inner + i];
            *out++ = vs_requantize(sum, p->mult, p->shift, p->out_offset, -128, 127);
        }
    }
}
