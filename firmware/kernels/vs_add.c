/* ADD of two same-shape int8 tensors with different scales: both inputs are shifted left for
 * headroom, rescaled to a common scale, summed, and rescaled to the output. The params are
 * read into locals once: every int8 store may alias them as far as the compiler knows. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

void vs_add(const vs_add_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    const uint32_t size = p->size;
    const int32_t off1 = p->in1_offset, off2 = p->in2_offset, left = p->left_shift;
    const int32_t m1 = p->in1_mult, s1 = p->in1_shift, m2 = p->in2_mult, s2 = p->in2_shift;
    const int32_t mo = p->out_mult, so = p->out_shift, oo = p->out_offset, lo = p->act_min, hi = p->act_max;
    for (uint32_t i = 0; i < size; ++i) {
        const int32_t a = (int32_t)((uint32_t)(in1[i] + off1) << left);
        const int32_t b = (int32_t)((uint32_t)(in2[i] + off2) << left);
        out[i] = vs_requantize(vs_mbqm_pos(a, m1, s1) + vs_mbqm_pos(b, m2, s2), mo, so, oo, lo, hi);
    }
}
