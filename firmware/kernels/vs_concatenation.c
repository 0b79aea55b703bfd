/* CONCATENATION of int8 tensors that share the output's scale and zero point (TFLM's int8
 * kernel requires that): for each index before the axis, each input's block is copied in turn. */
#include "vs_kernels.h"

void vs_concatenation(const vs_concat_params *p, const int8_t *const *in, int8_t *out)
{
    for (uint32_t o = 0; o < p->outer; ++o)
        for (uint32_t k = 0; k < p->count; ++k) {
            const uint32_t n = p->block[k];
            const int8_t *src = in[k] + o * n;
            for (uint32_t i = 0; i < n; ++i) *out++ = src[i];
        }
}
