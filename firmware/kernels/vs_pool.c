/* MAX_POOL_2D and AVERAGE_POOL_2D on raw int8 values (TFLite requires the input and output
 * to share scale and zero point). Windows are clipped at the border; padding is never read. */
#include "vs_kernels.h"

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

void vs_average_pool2d(const vs_pool_params *p, const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            const window w = window_at(p, oy, ox);
            const int32_t n = (w.ky1 - w.ky0) * (w.kx1 - w.kx0);
            for (int c = 0; c < p->c; ++c) {
                int32_t acc = 0;
                for (int ky = w.ky0; ky < w.ky1; ++ky)
                    for (int kx = w.kx0; kx < w.kx1; ++kx)
                        acc += in[((w.iy0 + ky) * p->in_w + w.ix0 + kx) * p->c + c];
                /* round half away from zero, as TFLite does */
                acc = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n;
                *out++ = (int8_t)clamp(acc, p->act_min, p->act_max);
            }
        }
    }
}
