/* CONV_2D with dense or sparse weights (FULLY_CONNECTED runs here as a 1x1 convolution).
 * For each output pixel the input patch is gathered once (im2col, as CMSIS-NN does) and
 * every output channel is a dot product with it. */
#include <string.h>

#include "vs_fixedpoint.h"
#include "vs_kernels.h"

size_t vs_conv2d_buffer_size(const vs_conv_params *p)
{
    return p->k_h == 1 && p->k_w == 1 ? 0 : (size_t)p->k_h * p->k_w * p->in_c;
}

/* The patch under output pixel (oy, ox), [k_h][k_w][in_c]; padding reads as the input
 * zero point, whose folded contribution is zero. */
static const int8_t *patch(const vs_conv_params *p, const int8_t *in, int oy, int ox, int8_t *buffer)
{
    const int iy0 = oy * p->stride_h - p->pad_top;
    const int ix0 = ox * p->stride_w - p->pad_left;
    if (p->k_h == 1 && p->k_w == 1) return in + (iy0 * p->in_w + ix0) * p->in_c;
    int8_t *dst = buffer;
    for (int ky = 0; ky < p->k_h; ++ky) {
        const int iy = iy0 + ky * p->dil_h;
        for (int kx = 0; kx < p->k_w; ++kx, dst += p->in_c) {
            const int ix = ix0 + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w)
                memset(dst, -p->in_offset, p->in_c);
            else
                memcpy(dst, in + (iy * p->in_w + ix) * p->in_c, p->in_c);
        }
    }
    return buffer;
}

void vs_conv2d(const vs_conv_params *p, const int8_t *weights, const int8_t *in, int8_t *out, int8_t *buffer)
{
    const int n = p->k_h * p->k_w * p->in_c;
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            const int8_t *x = patch(p, in, oy, ox, buffer);
            const int8_t *w = weights;
            for (int oc = 0; oc < p->out_c; ++oc, w += n) {
                int32_t acc = p->bias[oc];
                for (int i = 0; i < n; ++i) acc += w[i] * x[i];
                *out++ = vs_requantize(acc, p->mult[oc], p->shift[oc], p->out_offset, p->act_min, p->act_max);
            }
        }
    }
}

void vs_conv2d_sparse(const vs_conv_params *p, const vs_sparse *weights, const int8_t *in, int8_t *out,
                      int8_t *buffer)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            const int8_t *x0 = patch(p, in, oy, ox, buffer);
            const uint8_t *delta = weights->delta;
            const int8_t *value = weights->value;
            for (int oc = 0; oc < p->out_c; ++oc) {
                const int n = weights->count[oc];
                const int8_t *x = x0;
                int32_t acc = p->bias[oc];
                for (int i = 0; i < n; ++i) {
                    x += delta[i];
                    acc += value[i] * *x;
                }
                delta += n;
                value += n;
                *out++ = vs_requantize(acc, p->mult[oc], p->shift[oc], p->out_offset, p->act_min, p->act_max);
            }
        }
    }
}
