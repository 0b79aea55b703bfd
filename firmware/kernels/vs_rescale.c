/* Element-wise requantization with a clamp: QUANTIZE int8 -> int8, standalone RELU, RELU6
 * and LEAKY_RELU. Values at or above the input zero point are scaled by pos_mult, values
 * below it by neg_mult (they differ only for LEAKY_RELU, where neg_mult carries alpha). */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

void vs_rescale(const vs_rescale_params *p, const int8_t *in, int8_t *out)
{
    for (uint32_t i = 0; i < p->size; ++i) {
        const int32_t x = in[i] + p->in_offset;
        const int32_t v = x >= 0 ? vs_mbqm(x, p->pos_mult, p->pos_shift) : vs_mbqm(x, p->neg_mult, p->neg_shift);
        const int32_t y = v + p->out_offset;
        out[i] = (int8_t)(y < p->act_min ? p->act_min : (y > p->act_max ? p->act_max : y));
    }
}
