/* MUL of two int8 tensors (one may broadcast): (a - zp_a) * (b - zp_b) rescaled by
 * s_a * s_b / s_out, as TFLM's reference integer MUL. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

void vs_mul(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    for (uint32_t i0 = 0; i0 < p->dims[0]; ++i0)
        for (uint32_t i1 = 0; i1 < p->dims[1]; ++i1)
            for (uint32_t i2 = 0; i2 < p->dims[2]; ++i2)
                for (uint32_t i3 = 0; i3 < p->dims[3]; ++i3) {
                    const int32_t a = in1[VS_AT(p->stride1, i0, i1, i2, i3)] + p->in1_offset;
                    const int32_t b = in2[VS_AT(p->stride2, i0, i1, i2, i3)] + p->in2_offset;
                    *out++ = vs_requantize(a * b, p->out_mult, p->out_shift, p->out_offset, p->act_min, p->act_max);
                }
}
