/* DEPTHWISE_CONV_2D: output channel ic * depth_mult + m reads input channel ic only.
 *
 * The bias has the input zero point folded in for every tap, so a tap on padding must read
 * the zero point itself. A pixel whose window lies inside the image reads the input where it
 * is; a border pixel first copies its window, padding filled with the zero point, into the
 * scratch buffer ([k_h][k_w][in_c], vs_depthwise_conv2d_buffer_size bytes). Either way the
 * arithmetic runs without a single bounds test. Channels are innermost: with depth_mult 1
 * (the usual case) and the DSP extension four neighbouring channels share every load. */
#include "vs_copy.h"
#include "vs_fixedpoint.h"
#include "vs_kernels.h"
#include "vs_simd.h"

/* whether some window of the layer reaches outside the image */
static int has_border(const vs_depthwise_params *p)
{
    const int last_y = (p->out_h - 1) * p->stride_h + (p->k_h - 1) * p->dil_h - p->pad_top;
    const int last_x = (p->out_w - 1) * p->stride_w + (p->k_w - 1) * p->dil_w - p->pad_left;
    return p->pad_top || p->pad_left || last_y >= p->in_h || last_x >= p->in_w;
}

size_t vs_depthwise_conv2d_buffer_size(const vs_depthwise_params *p)
{
    return has_border(p) ? (size_t)p->k_h * p->k_w * p->in_c : 0;
}

/* The window at input position (iy0, ix0) copied to buffer, taps outside the image set to pad */
static void copy_window(const vs_depthwise_params *p, const int8_t *in, int iy0, int ix0, int8_t value,
                        int8_t *buffer)
{
    const uint32_t pad = vs_word4(value);
    const int in_c = p->in_c;
    for (int ky = 0; ky < p->k_h; ++ky) {
        const int iy = iy0 + ky * p->dil_h;
        for (int kx = 0; kx < p->k_w; ++kx, buffer += in_c) {
            const int ix = ix0 + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w)
                vs_fill(buffer, &pad, in_c);
            else
                vs_copy(buffer, in + (iy * p->in_w + ix) * in_c, in_c);
        }
    }
}

#if VS_DSP
/* one tap of four channels: x and w are the input and weight words */
#define VS_TAP4(xv, wv)                                      \
    do {                                                     \
        const int32_t x_ = (xv), w_ = (wv);                  \
        const int32_t xe = vs_even16(x_), xo = vs_odd16(x_); \
        const int32_t we = vs_even16(w_), wo = vs_odd16(w_); \
        a0 = __smlabb(we, xe, a0);                           \
        a2 = __smlatt(we, xe, a2);                           \
        a1 = __smlabb(wo, xo, a1);                           \
        a3 = __smlatt(wo, xo, a3);                           \
    } while (0)

/* Four channels over a k_h x k_w window: x at the window's first tap (row bytes apart, step
 * bytes between taps), w at the weights' first tap (ic bytes between taps). A 3x3 window, the
 * common one, is unrolled: two loads at register offsets per tap. */
static inline __attribute__((always_inline)) void window4(const int8_t *x, const int8_t *w, int k_h, int k_w,
                                                          int row, int step, int ic, int32_t *a)
{
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    if (k_h == 3 && k_w == 3) {
        const int step2 = 2 * step, ic2 = 2 * ic;
        for (int r = 0; r < 3; ++r, x += row, w += 3 * ic) {
            VS_TAP4(vs_read4(x), vs_read4(w));
            VS_TAP4(vs_read4(x + step), vs_read4(w + ic));
            VS_TAP4(vs_read4(x + step2), vs_read4(w + ic2));
        }
    } else {
        for (int r = 0; r < k_h; ++r, x += row) {
            const int8_t *xt = x;
            for (int k = 0; k < k_w; ++k, xt += step, w += ic) VS_TAP4(vs_read4(xt), vs_read4(w));
        }
    }
    a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
}
#undef VS_TAP4
#endif

void vs_depthwise_conv2d(const vs_depthwise_params *p, const int8_t *weights, const int8_t *in, int8_t *out,
                         int8_t *buffer)
{
    const int out_h = p->out_h, out_w = p->out_w, out_c = p->out_c, in_c = p->in_c, k_h = p->k_h, k_w = p->k_w;
    const int mult_d = p->depth_mult, in_w = p->in_w, in_h = p->in_h;
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    const int8_t pad = (int8_t)-p->in_offset;
    const int border = has_border(p);
    for (int oy = 0; oy < out_h; ++oy) {
        const int iy0 = oy * p->stride_h - p->pad_top;
        const int rows_inside = iy0 >= 0 && iy0 + (k_h - 1) * p->dil_h < in_h;
        for (int ox = 0; ox < out_w; ++ox) {
            const int ix0 = ox * p->stride_w - p->pad_left;
            const int8_t *x;
            int row, step;
            if (!border || (rows_inside && ix0 >= 0 && ix0 + (k_w - 1) * p->dil_w < in_w)) {
                x = in + (iy0 * in_w + ix0) * in_c;
                row = p->dil_h * in_w * in_c, step = p->dil_w * in_c;
            } else {
                copy_window(p, in, iy0, ix0, pad, buffer);
                x = buffer;
                row = k_w * in_c, step = in_c;
            }
            if (mult_d == 1) {
                int c = 0;
#if VS_DSP
                for (; c + 4 <= out_c; c += 4) {
                    int32_t acc[4] = {bias[c], bias[c + 1], bias[c + 2], bias[c + 3]};
                    window4(x + c, weights + c, k_h, k_w, row, step, in_c, acc);
                    *out++ = vs_requantize(acc[0], mult[c], shift[c], out_offset, act_min, act_max);
                    *out++ = vs_requantize(acc[1], mult[c + 1], shift[c + 1], out_offset, act_min, act_max);
                    *out++ = vs_requantize(acc[2], mult[c + 2], shift[c + 2], out_offset, act_min, act_max);
                    *out++ = vs_requantize(acc[3], mult[c + 3], shift[c + 3], out_offset, act_min, act_max);
                }
#endif
                for (; c < out_c; ++c) {
                    int32_t acc = bias[c];
                    const int8_t *w = weights + c;
                    for (int ky = 0; ky < k_h; ++ky) {
                        const int8_t *xt = x + ky * row + c;
                        for (int kx = 0; kx < k_w; ++kx, xt += step, w += out_c) acc += *w * *xt;
                    }
                    *out++ = vs_requantize(acc, mult[c], shift[c], out_offset, act_min, act_max);
                }
                continue;
            }
            for (int ic = 0, oc = 0; ic < in_c; ++ic) {
                for (int m = 0; m < mult_d; ++m, ++oc) {
                    int32_t acc = bias[oc];
                    const int8_t *w = weights + oc;
                    for (int ky = 0; ky < k_h; ++ky) {
                        const int8_t *xt = x + ky * row + ic;
                        for (int kx = 0; kx < k_w; ++kx, xt += step, w += out_c) acc += *w * *xt;
                    }
                    *out++ = vs_requantize(acc, mult[oc], shift[oc], out_offset, act_min, act_max);
                }
            }
        }
    }
}
