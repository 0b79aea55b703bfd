/* DEPTHWISE_CONV_2D: output channel ic * depth_mult + m reads input channel ic only. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"

void vs_depthwise_conv2d(const vs_depthwise_params *p, const int8_t *weights, const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            const int iy0 = oy * p->stride_h - p->pad_top;
            const int ix0 = ox * p->stride_w - p->pad_left;
            for (int oc = 0; oc < p->out_c; ++oc) {
                const int ic = oc / p->depth_mult;
                int32_t acc = p->bias[oc];
                for (int ky = 0; ky < p->k_h; ++ky) {
                    const int iy = iy0 + ky * p->dil_h;
                    for (int kx = 0; kx < p->k_w; ++kx) {
                        const int ix = ix0 + kx * p->dil_w;
                        const int32_t w = weights[(ky * p->k_w + kx) * p->out_c + oc];
                        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w)
                            acc -= w * p->in_offset;  /* padding: take back the folded term */
                        else
                            acc += w * in[(iy * p->in_w + ix) * p->in_c + ic];
                    }
                }
                *out++ = vs_requantize(acc, p->mult[oc], p->shift[oc], p->out_offset, p->act_min, p->act_max);
            }
        }
    }
}
