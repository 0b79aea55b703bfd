/* DEPTHWISE_CONV_2D: output channel ic * depth_mult + m reads input channel ic only.
 *
 * The bias has the input zero point folded in for every tap, so a tap on padding must read
 * the zero point itself. Each output pixel first finds the taps that lie inside the image;
 * a pixel whose window is all inside (the interior) runs without any check, and only the
 * border pixels test each tap. Channels are innermost: with depth_mult 1 (the usual case)
 * four neighbouring channels share every load, and with the DSP extension two SMLABB/SMLATT
 * pairs multiply them. */
#include "vs_fixedpoint.h"
#include "vs_kernels.h"
#include "vs_simd.h"

/* The first and one-past-last tap of a window at position i0 (stride-free start), stepping
 * by dil, that fall inside [0, size); the window is k taps wide. No division: k is small. */
static void inside(int i0, int dil, int k, int size, int *first, int *last)
{
    int a = 0, b = k;
    while (a < k && i0 + a * dil < 0) ++a;
    while (b > a && i0 + (b - 1) * dil >= size) --b;
    *first = a, *last = b;
}

typedef struct {
    const int8_t *in, *weights;
    int in_w, c, k_w, dil_h, dil_w;
    int ky0, ky1, kx0, kx1;  /* taps inside the image */
    int8_t pad;              /* the input zero point */
} window;

/* sum over the window of weight * input for channel c (depth_mult 1), from acc; in points at
 * the window's top-left input pixel, which may lie outside the image */
static int32_t channel_sum(const window *v, const int8_t *in, int c, int32_t acc, int k_h)
{
    const int ic = v->c, row = v->in_w * ic, step = v->dil_w * ic, wrow = v->k_w * ic;
    if (v->ky0 == 0 && v->ky1 == k_h && v->kx0 == 0 && v->kx1 == v->k_w) {
        for (int ky = 0; ky < k_h; ++ky) {
            const int8_t *x = in + ky * v->dil_h * row + c, *w = v->weights + ky * wrow + c;
            for (int kx = 0; kx < v->k_w; ++kx, x += step, w += ic) acc += *w * *x;
        }
        return acc;
    }
    for (int ky = 0; ky < k_h; ++ky) {
        const int8_t *x = in + ky * v->dil_h * row + c, *w = v->weights + ky * wrow + c;
        for (int kx = 0; kx < v->k_w; ++kx, x += step, w += ic) {
            const int inside_tap = ky >= v->ky0 && ky < v->ky1 && kx >= v->kx0 && kx < v->kx1;
            acc += *w * (inside_tap ? *x : v->pad);
        }
    }
    return acc;
}

#if VS_DSP
/* Taps in a rectangle of the window for channels c .. c + 3 at once: one word of input and one
 * of weights per tap, sign-extended into even and odd channel pairs. */
static inline __attribute__((always_inline)) void rect4(const int8_t *x, const int8_t *w, int rows, int cols,
                                                        int xrow, int xstep, int wrow, int wstep, int32_t *a)
{
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    for (int r = 0; r < rows; ++r, w += wrow, x += xrow) {
        const int8_t *wt = w, *xt = x;
        for (int k = 0; k < cols; ++k, wt += wstep, xt += xstep) {
            const int32_t wv = vs_read4(wt), we = vs_even16(wv), wo = vs_odd16(wv);
            const int32_t xv = vs_read4(xt), xe = vs_even16(xv), xo = vs_odd16(xv);
            a0 = __smlabb(we, xe, a0);
            a2 = __smlatt(we, xe, a2);
            a1 = __smlabb(wo, xo, a1);
            a3 = __smlatt(wo, xo, a3);
        }
    }
    a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
}

/* The same for taps on padding, which read the zero point (pad16: it in both halves) */
static inline __attribute__((always_inline)) void pad_rect4(const int8_t *w, int rows, int cols, int wrow, int wstep, int32_t pad16, int32_t *a)
{
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    for (int r = 0; r < rows; ++r, w += wrow) {
        const int8_t *wt = w;
        for (int k = 0; k < cols; ++k, wt += wstep) {
            const int32_t wv = vs_read4(wt), we = vs_even16(wv), wo = vs_odd16(wv);
            a0 = __smlabb(we, pad16, a0);
            a2 = __smlatt(we, pad16, a2);
            a1 = __smlabb(wo, pad16, a1);
            a3 = __smlatt(wo, pad16, a3);
        }
    }
    a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
}

/* one tap of four channels: x and w are the input and weight words */
#define VS_TAP4(xv, wv)                                                  \
    do {                                                                 \
        const int32_t x_ = (xv), w_ = (wv);                              \
        const int32_t xe = vs_even16(x_), xo = vs_odd16(x_);             \
        const int32_t we = vs_even16(w_), wo = vs_odd16(w_);             \
        a0 = __smlabb(we, xe, a0);                                       \
        a2 = __smlatt(we, xe, a2);                                       \
        a1 = __smlabb(wo, xo, a1);                                       \
        a3 = __smlatt(wo, xo, a3);                                       \
    } while (0)

/* An interior 3x3 window, unrolled: every tap is two loads at register offsets, no pointer
 * or counter updates between them. */
static inline __attribute__((always_inline)) void window3x3(const int8_t *x, const int8_t *w, int row, int step,
                                                            int ic, int32_t *a)
{
    int32_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    const int step2 = 2 * step, ic2 = 2 * ic;
    for (int r = 0; r < 3; ++r, x += row, w += 3 * ic) {
        VS_TAP4(vs_read4(x), vs_read4(w));
        VS_TAP4(vs_read4(x + step), vs_read4(w + ic));
        VS_TAP4(vs_read4(x + step2), vs_read4(w + ic2));
    }
    a[0] = a0, a[1] = a1, a[2] = a2, a[3] = a3;
}
#undef VS_TAP4

/* The whole window for channels c .. c + 3: the taps inside the image, then the padding
 * around them (top rows, bottom rows, and left and right of the rows between), so no tap
 * is tested; an interior pixel has no padding rectangles at all. */
static inline __attribute__((always_inline)) void channel_sum4(const window *v, const int8_t *in, int c, int32_t *acc, int k_h)
{
    const int ic = v->c, row = v->dil_h * v->in_w * ic, step = v->dil_w * ic, k_w = v->k_w, wrow = k_w * ic;
    const int ky0 = v->ky0, ky1 = v->ky1, kx0 = v->kx0, kx1 = v->kx1;
    const int8_t *w = v->weights + c;
    if (ky0 == 0 && ky1 == k_h && kx0 == 0 && kx1 == k_w) {
        /* the interior; 3x3, the common filter, with constant trip counts the compiler unrolls */
        if (k_h == 3 && k_w == 3)
            window3x3(in + c, w, row, step, ic, acc);
        else
            rect4(in + c, w, k_h, k_w, row, step, wrow, ic, acc);
        return;
    }
    rect4(in + ky0 * row + kx0 * step + c, w + ky0 * wrow + kx0 * ic, ky1 - ky0, kx1 - kx0, row, step, wrow, ic, acc);
    const int32_t pad16 = (int32_t)(((uint32_t)(uint16_t)v->pad << 16) | (uint16_t)v->pad);
    pad_rect4(w, ky0, k_w, wrow, ic, pad16, acc);
    pad_rect4(w + ky1 * wrow, k_h - ky1, k_w, wrow, ic, pad16, acc);
    pad_rect4(w + ky0 * wrow, ky1 - ky0, kx0, wrow, ic, pad16, acc);
    pad_rect4(w + ky0 * wrow + kx1 * ic, ky1 - ky0, k_w - kx1, wrow, ic, pad16, acc);
}
#endif

void vs_depthwise_conv2d(const vs_depthwise_params *p, const int8_t *weights, const int8_t *in, int8_t *out)
{
    const int out_h = p->out_h, out_w = p->out_w, out_c = p->out_c, in_c = p->in_c, k_h = p->k_h;
    const int mult_d = p->depth_mult, in_w = p->in_w;
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    window v = {in, weights, in_w, in_c, p->k_w, p->dil_h, p->dil_w, 0, 0, 0, 0, (int8_t)-p->in_offset};
    for (int oy = 0; oy < out_h; ++oy) {
        const int iy0 = oy * p->stride_h - p->pad_top;
        inside(iy0, v.dil_h, k_h, p->in_h, &v.ky0, &v.ky1);
        for (int ox = 0; ox < out_w; ++ox) {
            const int ix0 = ox * p->stride_w - p->pad_left;
            inside(ix0, v.dil_w, v.k_w, in_w, &v.kx0, &v.kx1);
            /* the window's top-left pixel; only taps inside the image are dereferenced, and
             * uintptr_t arithmetic keeps an outside address from being formed as a pointer */
            const int8_t *at = (const int8_t *)((uintptr_t)in + (uintptr_t)(intptr_t)((iy0 * in_w + ix0) * in_c));
            if (mult_d == 1) {
                int c = 0;
#if VS_DSP
                for (; c + 4 <= out_c; c += 4) {
                    int32_t acc[4] = {bias[c], bias[c + 1], bias[c + 2], bias[c + 3]};
                    channel_sum4(&v, at, c, acc, k_h);
                    *out++ = vs_requantize(acc[0], mult[c], shift[c], out_offset, act_min, act_max);
                    *out++ = vs_requantize(acc[1], mult[c + 1], shift[c + 1], out_offset, act_min, act_max);
                    *out++ = vs_requantize(acc[2], mult[c + 2], shift[c + 2], out_offset, act_min, act_max);
                    *out++ = vs_requantize(acc[3], mult[c + 3], shift[c + 3], out_offset, act_min, act_max);
                }
#endif
                for (; c < out_c; ++c)
                    *out++ = vs_requantize(channel_sum(&v, at, c, bias[c], k_h), mult[c], shift[c], out_offset,
                                           act_min, act_max);
                continue;
            }
            for (int ic = 0, oc = 0; ic < in_c; ++ic) {
                for (int m = 0; m < mult_d; ++m, ++oc) {
                    int32_t acc = bias[oc];
                    for (int ky = 0; ky < k_h; ++ky) {
                        for (int kx = 0; kx < v.k_w; ++kx) {
                            const int inside_tap = ky >= v.ky0 && ky < v.ky1 && kx >= v.kx0 && kx < v.kx1;
                            const int32_t x = inside_tap
                                ? in[((iy0 + ky * v.dil_h) * in_w + ix0 + kx * v.dil_w) * in_c + ic] : v.pad;
                            acc += weights[(ky * v.k_w + kx) * out_c + oc] * x;
                        }
                    }
                    *out++ = vs_requantize(acc, mult[oc], shift[oc], out_offset, act_min, act_max);
                }
            }
        }
    }
}
