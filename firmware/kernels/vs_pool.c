/* MAX_POOL_2D and AVERAGE_POOL_2D on raw int8 values (TFLite requires the input and output
 * to share scale and zero point). Windows are clipped at the border; padding is never read. */
#include "vs_kernels.h"
#include "vs_simd.h"

static int32_t clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* The window under output pixel (oy, ox), clipped to the input: rows ky0..ky1-1 and
 * columns kx0..kx1-1 of the filter, starting at input pixel (iy0, ix0). */
typedef struct {
    int iy0, ix0, ky0, ky1, kx0, kx1;
} window;

static window window_at(const vs_pool_params *p, int oy, int ox)
{
    window w;
    w.iy0 = oy * p->stride_h - p->pad_top;
    w.ix0 = ox * p->stride_w - p->pad_left;
    w.ky0 = w.iy0 < 0 ? -w.iy0 : 0;
    w.kx0 = w.ix0 < 0 ? -w.ix0 : 0;
    w.ky1 = p->k_h < p->in_h - w.iy0 ? p->k_h : p->in_h - w.iy0;
    w.kx1 = p->k_w < p->in_w - w.ix0 ? p->k_w : p->in_w - w.ix0;
    return w;
}

void vs_max_pool2d(const vs_pool_params *p, const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            const window w = window_at(p, oy, ox);
            for (int c = 0; c < p->c; ++c) {
                int32_t m = -128;
                for (int ky = w.ky0; ky < w.ky1; ++ky)
                    for (int kx = w.kx0; kx < w.kx1; ++kx) {
                        const int32_t v = in[((w.iy0 + ky) * p->in_w + w.ix0 + kx) * p->c + c];
                        m = v > m ? v : m;
                    }
                *out++ = (int8_t)clamp(m, p->act_min, p->act_max);
            }
        }
    }
}

/* the window's sum for channel c: rows of the window are in_w * c bytes apart */
static int32_t window_sum(const int8_t *x, int rows, int cols, int row, int c)
{
    int32_t acc = 0;
    for (int r = 0; r < rows; ++r, x += row)
        for (int k = 0; k < cols; ++k) acc += x[k * c];
    return acc;
}

/* round half away from zero, as TFLite does */
static int32_t average(int32_t sum, int32_t n)
{
    return sum > 0 ? (sum + n / 2) / n : (sum - n / 2) / n;
}

void vs_average_pool2d(const vs_pool_params *p, const int8_t *in, int8_t *out)
{
    const int c = p->c, row = p->in_w * c, out_h = p->out_h, out_w = p->out_w;
    const int32_t lo = p->act_min, hi = p->act_max;
    for (int oy = 0; oy < out_h; ++oy) {
        for (int ox = 0; ox < out_w; ++ox) {
            const window w = window_at(p, oy, ox);
            const int rows = w.ky1 - w.ky0, cols = w.kx1 - w.kx0;
            const int32_t n = rows * cols;
            const int8_t *x = in + ((w.iy0 + w.ky0) * p->in_w + w.ix0 + w.kx0) * c;
            int ch = 0;
#if VS_DSP
            /* four channels at once in 16-bit halves (SXTAB16), while a window's sum fits them */
            if (n <= 255) {
                for (; ch + 4 <= c; ch += 4) {
                    int32_t even = 0, odd = 0;
                    const int8_t *xr = x + ch;
                    for (int r = 0; r < rows; ++r, xr += row) {
                        const int8_t *xt = xr;
                        for (int k = 0; k < cols; ++k, xt += c) {
                            const int32_t v = vs_read4(xt);
                            even = __sxtab16(even, v);
                            __asm("sxtab16 %0, %0, %1, ror #8" : "+r"(odd) : "r"(v));
                        }
                    }
                    *out++ = (int8_t)clamp(average((int16_t)even, n), lo, hi);
                    *out++ = (int8_t)clamp(average((int16_t)odd, n), lo, hi);
                    *out++ = (int8_t)clamp(average(even >> 16, n), lo, hi);
                    *out++ = (int8_t)clamp(average(odd >> 16, n), lo, hi);
                }
            }
#endif
            for (; ch < c; ++ch) *out++ = (int8_t)clamp(average(window_sum(x + ch, rows, cols, row, c), n), lo, hi);
        }
    }
}
