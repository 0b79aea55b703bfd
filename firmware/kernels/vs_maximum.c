/* MAXIMUM and MINIMUM of two int8 tensors (one may broadcast) on the raw values, as TFLM's
 * int8 kernels compare them (the converter gives inputs and output one quantization). */
#include "vs_kernels.h"

static void extremum(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out, int maximum)
{
    for (uint32_t i0 = 0; i0 < p->dims[0]; ++i0)
        for (uint32_t i1 = 0; i1 < p->dims[1]; ++i1)
            for (uint32_t i2 = 0; i2 < p->dims[2]; ++i2)
                for (uint32_t i3 = 0; i3 < p->dims[3]; ++i3) {
                    const int8_t a = in1[VS_AT(p->stride1, i0, i1, i2, i3)];
                    const int8_t b = in2[VS_AT(p->stride2, i0, i1, i2, i3)];
                    *out++ = (a > b) == maximum ? a : b;
                }
}

void vs_maximum(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    extremum(p, in1, in2, out, 1);
}

void vs_minimum(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    extremum(p, in1, in2, out, 0);
}
