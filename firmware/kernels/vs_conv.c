/* CONV_2D with dense or sparse weights (FULLY_CONNECTED runs here as a 1x1 convolution).
 * For each output pixel the input patch is gathered once (im2col, as CMSIS-NN does) and
 * every output channel is a dot product with it.
 *
 * The params are read into locals first: every int8 store may alias them as far as the
 * compiler knows, which would otherwise reload each field once per output. */
#include <string.h>

#include "vs_fixedpoint.h"
#include "vs_kernels.h"

size_t vs_conv2d_buffer_size(const vs_conv_params *p)
{
    return p->k_h == 1 && p->k_w == 1 ? 0 : (size_t)p->k_h * p->k_w * p->in_c;
}

/* The patch under output pixel (oy, ox), [k_h][k_w][in_c]; padding reads as the input
 * zero point, whose folded contribution is zero. A filter row that lies inside the
 * image is one contiguous run of the input (without dilation) and is copied at once. */
static const int8_t *patch(const vs_conv_params *p, const int8_t *in, int oy, int ox, int8_t *buffer)
{
    const int in_h = p->in_h, in_w = p->in_w, in_c = p->in_c, k_w = p->k_w, dil_w = p->dil_w;
    const int iy0 = oy * p->stride_h - p->pad_top;
    const int ix0 = ox * p->stride_w - p->pad_left;
    const int8_t pad = (int8_t)-p->in_offset;
    if (p->k_h == 1 && k_w == 1) return in + (iy0 * in_w + ix0) * in_c;
    const int row_inside = dil_w == 1 && ix0 >= 0 && ix0 + k_w <= in_w;
    int8_t *dst = buffer;
    for (int ky = 0; ky < p->k_h; ++ky) {
        const int iy = iy0 + ky * p->dil_h;
        if (iy < 0 || iy >= in_h) {
            memset(dst, pad, (size_t)k_w * in_c);
            dst += k_w * in_c;
        } else if (row_inside) {
            memcpy(dst, in + (iy * in_w + ix0) * in_c, (size_t)k_w * in_c);
            dst += k_w * in_c;
        } else {
            for (int kx = 0; kx < k_w; ++kx, dst += in_c) {
                const int ix = ix0 + kx * dil_w;
                if (ix < 0 || ix >= in_w)
                    memset(dst, pad, in_c);
                else
                    memcpy(dst, in + (iy * in_w + ix) * in_c, in_c);
            }
        }
    }
    return buffer;
}

void vs_conv2d(const vs_conv_params *p, const int8_t *weights, const int8_t *in, int8_t *out, int8_t *buffer)
{
    const int n = p->k_h * p->k_w * p->in_c, out_h = p->out_h, out_w = p->out_w, out_c = p->out_c;
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    for (int oy = 0; oy < out_h; ++oy) {
        for (int ox = 0; ox < out_w; ++ox) {
            const int8_t *x = patch(p, in, oy, ox, buffer);
            const int8_t *w = weights;
            for (int oc = 0; oc < out_c; ++oc, w += n) {
                int32_t acc = bias[oc];
                for (int i = 0; i < n; ++i) acc += w[i] * x[i];
                *out++ = vs_requantize(acc, mult[oc], shift[oc], out_offset, act_min, act_max);
            }
        }
    }
}

void vs_conv2d_sparse(const vs_conv_params *p, const vs_sparse *weights, const int8_t *in, int8_t *out,
                      int8_t *buffer)
{
    const int out_h = p->out_h, out_w = p->out_w, out_c = p->out_c;
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    const uint16_t *count = weights->count;
    for (int oy = 0; oy < out_h; ++oy) {
        for (int ox = 0; ox < out_w; ++ox) {
            const int8_t *x0 = patch(p, in, oy, ox, buffer);
            const uint8_t *delta = weights->delta;
            const int8_t *value = weights->value;
            for (int oc = 0; oc < out_c; ++oc) {
                const int n = count[oc];
                const int8_t *x = x0;
                int32_t acc = bias[oc];
                for (int i = 0; i < n; ++i) {
                    x += delta[i];
                    acc += value[i] * *x;
                }
                delta += n;
                value += n;
                *out++ = vs_requantize(acc, mult[oc], shift[oc], out_offset, act_min, act_max);
            }
        }
    }
}
