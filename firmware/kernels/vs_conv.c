/* CONV_2D with dense or sparse weights (FULLY_CONNECTED runs here as a 1x1 convolution).
 * For each output pixel the input patch is gathered once (im2col, as CMSIS-NN does) and
 * every output channel is a dot product with it. With the DSP extension two pixels' patches
 * go side by side and each pass multiplies them with two output channels (SMLAD), so every
 * weight and input word is loaded and sign-extended once for two products.
 *
 * The params are read into locals first: every int8 store may alias them as far as the
 * compiler knows, which would otherwise reload each field once per output. */
#include "vs_config.h"
#include "vs_copy.h"
#define VS_MBQM_LEFT VS_CONV_LEFT_SHIFT
#include "vs_fixedpoint.h"
#include "vs_kernels.h"
#include "vs_simd.h"

/* A pointwise convolution (1x1, stride 1, no padding) reads its patches where they are: the
 * image is a matrix of pixels in_c bytes apart. */
static int is_pointwise(const vs_conv_params *p)
{
    return p->k_h == 1 && p->k_w == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_top == 0 &&
           p->pad_left == 0 && p->in_h == p->out_h && p->in_w == p->out_w;
}

size_t vs_conv2d_buffer_size(const vs_conv_params *p)
{
    return is_pointwise(p) ? 0 : (size_t)2 * p->k_h * p->k_w * p->in_c;
}

size_t vs_conv2d_sparse_buffer_size(const vs_conv_params *p)
{
    return p->k_h == 1 && p->k_w == 1 ? 0 : (size_t)p->k_h * p->k_w * p->in_c;
}

/* The patch under output pixel px (raster order), [k_h][k_w][in_c]; padding reads as the input
 * zero point, whose folded contribution is zero. A 1x1 filter reads the input where it is, except
 * for the DSP pairs of a strided one (given a buffer), which want their two patches side by side:
 * it is copied there like any other. A filter row that lies inside the image is one contiguous
 * run of the input (without dilation) and is copied at once. */
static const int8_t *patch(const vs_conv_params *p, const int8_t *in, int px, int8_t *buffer)
{
    const int in_h = p->in_h, in_w = p->in_w, in_c = p->in_c, k_w = p->k_w;
    const int oy = px / p->out_w, ox = px - oy * p->out_w;
    const int dil_h = VS_CONV_DILATION ? p->dil_h : 1, dil_w = VS_CONV_DILATION ? p->dil_w : 1;
    const int iy0 = oy * p->stride_h - p->pad_top;
    const int ix0 = ox * p->stride_w - p->pad_left;
    const uint32_t pad = vs_word4((int8_t)-p->in_offset);
    if (!VS_CONV_GATHER || !buffer || (!VS_DSP && p->k_h == 1 && k_w == 1)) return in + (iy0 * in_w + ix0) * in_c;
    const int row_inside = dil_w == 1 && ix0 >= 0 && ix0 + k_w <= in_w;
    int8_t *dst = buffer;
    for (int ky = 0; ky < p->k_h; ++ky) {
        const int iy = iy0 + ky * dil_h;
        if (iy < 0 || iy >= in_h) {
            vs_fill(dst, &pad, k_w * in_c);
            dst += k_w * in_c;
        } else if (row_inside) {
            vs_copy(dst, in + (iy * in_w + ix0) * in_c, k_w * in_c);
            dst += k_w * in_c;
        } else {
            for (int kx = 0; kx < k_w; ++kx, dst += in_c) {
                const int ix = ix0 + kx * dil_w;
                if (ix < 0 || ix >= in_w)
                    vs_fill(dst, &pad, in_c);
                else
                    vs_copy(dst, in + (iy * in_w + ix) * in_c, in_c);
            }
        }
    }
    return buffer;
}

#if VS_DSP
/* One dot product of n bytes: the output channels left over after the groups of four, and the
 * last n % 4 bytes of a patch (below). One out-of-line copy for all of them: they are rare or
 * short, and inlined each would cost flash on every model. */
static __attribute__((noinline)) int32_t dot1(const int8_t *x, const int8_t *w, int n)
{
    int32_t acc = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const int32_t xv = vs_read4(x + i), wv = vs_read4(w + i);
        acc = __smlad(vs_even16(wv), vs_even16(xv), __smlad(vs_odd16(wv), vs_odd16(xv), acc));
    }
    for (; i < n; ++i) acc += w[i] * x[i];
    return acc;
}

/* Four output channels against one patch: each word of the patch is sign-extended once and
 * serves all four; each weight word costs one load, two SXTB16 and two SMLAD. Written in
 * assembly because gcc 12 spills here: the loop needs 13 registers, rows 1 and 3 are read at
 * offset n from rows 0 and 2 to keep it there. */
static inline __attribute__((always_inline)) void dot4(const int8_t *x, const int8_t *w, int n, int32_t *acc)
{
    const int8_t *wa = w, *wb = w + 2 * n, *const end = x + (n & ~3);
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    if (x != end) {
        int32_t xv, xe, wv, we;
#define VS_ROW(a, addr)                     \
    "ldr %[wv], " addr "\n\t"               \
    "sxtb16 %[we], %[wv]\n\t"               \
    "sxtb16 %[wv], %[wv], ror #8\n\t"       \
    "smlad %[" a "], %[we], %[xe], %[" a "]\n\t" \
    "smlad %[" a "], %[wv], %[xv], %[" a "]\n\t"
#define VS_STEP                             \
    "ldr %[xv], [%[x]], #4\n\t"             \
    "sxtb16 %[xe], %[xv]\n\t"               \
    "sxtb16 %[xv], %[xv], ror #8\n\t"       \
    VS_ROW("a1", "[%[wa], %[n]]")           \
    VS_ROW("a0", "[%[wa]], #4")             \
    VS_ROW("a3", "[%[wb], %[n]]")           \
    VS_ROW("a2", "[%[wb]], #4")
        /* two words per turn of the loop; an odd word count enters at the second */
        __asm volatile(
            "tst %[n], #4\n\t"
            "bne 2f\n"
            "1:\n\t"
            VS_STEP
            "2:\n\t"
            VS_STEP
            "cmp %[x], %[end]\n\t"
            "bne 1b"
            : [x] "+r"(x), [wa] "+r"(wa), [wb] "+r"(wb), [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2),
              [a3] "+r"(a3), [xv] "=&r"(xv), [xe] "=&r"(xe), [wv] "=&r"(wv), [we] "=&r"(we)
            : [n] "r"(n), [end] "r"(end)
            : "cc", "memory");
#undef VS_STEP
#undef VS_ROW
    }
    if (n & 3) {
        a0 += dot1(x, wa, n & 3);
        a1 += dot1(x, wa + n, n & 3);
        a2 += dot1(x, wb, n & 3);
        a3 += dot1(x, wb + n, n & 3);
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

/* Output channels oc.. of one pixel (w and out at channel oc): four at a time against the patch
 * x, the rest (fewer than four) one at a time; one requantization loop serves both */
static __attribute__((noinline)) void one_pixel(const vs_conv_params *p, const int8_t *x, const int8_t *w, int n,
                                                int8_t *out, int oc)
{
    const int out_c = p->out_c;
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    while (oc < out_c) {
        const int k = oc + 4 <= out_c ? 4 : 1;
        int32_t acc[4] = {bias[oc], 0, 0, 0};
        if (k == 4) {
            acc[1] = bias[oc + 1], acc[2] = bias[oc + 2], acc[3] = bias[oc + 3];
            dot4(x, w, n, acc);
        } else {
            acc[0] += dot1(x, w, n);
        }
        w += k * n;
        for (int j = 0; j < k; ++j, ++oc)
            *out++ = vs_requantize(acc[j], mult[oc], shift[oc], out_offset, act_min, act_max);
    }
}

#if VS_CONV_PAIRS
/* Two pixels against two output channels (pointwise convolutions, whose pixels lie n bytes
 * apart like the weight rows): each weight word is loaded and sign-extended once for both
 * pixels and each input word once for both channels. 14 registers: all there are. */
static inline __attribute__((always_inline)) void dot2x2(const int8_t *x, const int8_t *w, int n, int32_t *acc)
{
    const int8_t *const end = x + (n & ~3);
    int32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    if (x != end) {
        int32_t xa, xao, xb, xbo, we, wo;
#define VS_COL(p0, p1)                                \
    "sxtb16 %[we], %[wo]\n\t"                          \
    "sxtb16 %[wo], %[wo], ror #8\n\t"                  \
    "smlad %[" p0 "], %[we], %[xa], %[" p0 "]\n\t"     \
    "smlad %[" p0 "], %[wo], %[xao], %[" p0 "]\n\t"    \
    "smlad %[" p1 "], %[we], %[xb], %[" p1 "]\n\t"     \
    "smlad %[" p1 "], %[wo], %[xbo], %[" p1 "]\n\t"
#define VS_STEP                                 \
    "ldr %[xb], [%[x], %[n]]\n\t"               \
    "ldr %[xa], [%[x]], #4\n\t"                 \
    "sxtb16 %[xao], %[xa], ror #8\n\t"          \
    "sxtb16 %[xa], %[xa]\n\t"                   \
    "sxtb16 %[xbo], %[xb], ror #8\n\t"          \
    "sxtb16 %[xb], %[xb]\n\t"                   \
    "ldr %[wo], [%[w], %[n]]\n\t"               \
    VS_COL("a01", "a11")                        \
    "ldr %[wo], [%[w]], #4\n\t"                 \
    VS_COL("a00", "a10")
        /* two words per turn of the loop; an odd word count enters at the second */
        __asm volatile(
            "tst %[n], #4\n\t"
            "bne 2f\n"
            "1:\n\t"
            VS_STEP
            "2:\n\t"
            VS_STEP
            "cmp %[x], %[end]\n\t"
            "bne 1b"
            : [x] "+r"(x), [w] "+r"(w), [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11),
              [xa] "=&r"(xa), [xao] "=&r"(xao), [xb] "=&r"(xb), [xbo] "=&r"(xbo), [we] "=&r"(we), [wo] "=&r"(wo)
            : [n] "r"(n), [end] "r"(end)
            : "cc", "memory");
#undef VS_STEP
#undef VS_COL
    }
    if (n & 3) {
        a00 += dot1(x, w, n & 3);
        a01 += dot1(x, w + n, n & 3);
        a10 += dot1(x + n, w, n & 3);
        a11 += dot1(x + n, w + n, n & 3);
    }
    acc[0] = a00, acc[1] = a01, acc[2] = a10, acc[3] = a11;
}

/* Every output channel of two pixels whose patches lie n bytes apart (x and x + n): two
 * channels at a time through dot2x2, an odd last one through one_pixel for each pixel. out:
 * the first pixel's outputs, the second's follow. */
static __attribute__((noinline)) void two_pixels(const vs_conv_params *p, const int8_t *x,
                                                             const int8_t *w, int n, int8_t *out)
{
    const int out_c = p->out_c;
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    int oc = 0;
    for (; oc + 2 <= out_c; oc += 2, w += 2 * n) {
        int32_t acc[4] = {bias[oc], bias[oc + 1], bias[oc], bias[oc + 1]};
        dot2x2(x, w, n, acc);
        vs_requantize2(acc[0], acc[2], mult[oc], shift[oc], out_offset, act_min, act_max, out + oc, out + out_c + oc);
        vs_requantize2(acc[1], acc[3], mult[oc + 1], shift[oc + 1], out_offset, act_min, act_max, out + oc + 1,
                       out + out_c + oc + 1);
    }
    if (oc < out_c) { /* an odd last channel */
        one_pixel(p, x, w, n, out + oc, oc);
        one_pixel(p, x + n, w, n, out + out_c + oc, oc);
    }
}
#endif

#endif

void vs_conv2d(const vs_conv_params *p, const int8_t *weights, const int8_t *in, int8_t *out, int8_t *buffer)
{
    const int n = p->k_h * p->k_w * p->in_c, pixels = p->out_h * p->out_w, out_c = p->out_c;
#if VS_DSP
    int px = 0;
#if VS_CONV_PAIRS
    /* two pixels whose patches lie n bytes apart: side by side in the buffer (2 n bytes), or where
     * they are in the input for a pointwise convolution, which has no buffer (its size is 0) */
    for (; px + 2 <= pixels; px += 2, out += 2 * out_c) {
        const int8_t *x = patch(p, in, px, buffer);
        if (buffer) patch(p, in, px + 1, buffer + n);
        two_pixels(p, x, weights, n, out);
    }
#endif
    /* the last pixel of an odd count; every pixel where the model has no pairs */
    for (; px < pixels; ++px, out += out_c) one_pixel(p, patch(p, in, px, buffer), weights, n, out, 0);
#else
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    for (int px = 0; px < pixels; ++px) {
        const int8_t *x = patch(p, in, px, buffer);
        const int8_t *w = weights;
        for (int oc = 0; oc < out_c; ++oc, w += n) {
            int32_t acc = bias[oc];
            for (int i = 0; i < n; ++i) acc += w[i] * x[i];
            *out++ = vs_requantize(acc, mult[oc], shift[oc], out_offset, act_min, act_max);
        }
    }
#endif
}

void vs_conv2d_sparse(const vs_conv_params *p, const vs_sparse *weights, const int8_t *in, int8_t *out,
                      int8_t *buffer)
{
    const int pixels = p->out_h * p->out_w, out_c = p->out_c;
    const int32_t *bias = p->bias, *mult = p->mult;
    const int8_t *shift = p->shift;
    const int32_t out_offset = p->out_offset, act_min = p->act_min, act_max = p->act_max;
    const uint16_t *count = weights->count;
    for (int px = 0; px < pixels; ++px) {
        const int8_t *x0 = patch(p, in, px, buffer);
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
