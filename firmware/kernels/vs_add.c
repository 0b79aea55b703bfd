/* ADD of two same-shape int8 tensors with different scales: both inputs are shifted left for
 * headroom, rescaled to a common scale, summed, and rescaled to the output. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

void vs_add(const vs_add_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    for (uint32_t i = 0; i < p->size; ++i) {
        const int32_t a = (int32_t)((uint32_t)(in1[i] + p->in1_offset) << p->left_shift);
        const int32_t b = (int32_t)((uint32_t)(in2[i] + p->in2_offset) << p->left_shift);
        const int32_t sum = vs_mbqm(a, p->in1_mult, p->in1_shift) + vs_mbqm(b, p->in2_mult, p->in2_shift);
        out[i] = vs_requantize(sum, p->out_mult, p->out_shift, p->out_offset, p->act_min, p->act_max);
    }
}
