/* MAX_POOL_2D and AVERAGE_POOL_2D on raw int8 values (TFLite requires the input and output
 * to share scale and zero point). Windows are clipped at the border; padding is never read. */
#include "vs_kernels.h"

static int32_t clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

void vs_max_pool2d(const vs_pool_params *p, const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        for (int ox = 0; ox < p->out_w; ++ox) {
            const int iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
            const int ky0 = iy0 < 0 ? -iy0 : 0, kx0 = ix0 < 0 ? -ix0 : 0;
            const int ky1 = p->k_h < p->in_h - iy0 ? p->k_h : p->in_h - iy0;
            const int kx1 = p->k_w < p->in_w - ix0 ? p->k_w : p->in_w - ix0;
            for (int c = 0; c < p->c; ++c) {
                int32_t m = -128;
                for (int ky = ky0; ky < ky1; ++ky)
                    for (int kx = kx0; kx < kx1; ++kx) {
                        const int32_t v = in[((iy0 + ky) * p->in_w + ix0 + kx) * p->c + c];
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
            const int iy0 = oy * p->stride_h - p->pad_top, ix0 = ox * p->stride_w - p->pad_left;
            const int ky0 = iy0 < 0 ? -iy0 : 0, kx0 = ix0 < 0 ? -ix0 : 0;
            const int ky1 = p->k_h < p->in_h - iy0 ? p->k_h : p->in_h - iy0;
            const int kx1 = p->k_w < p->in_w - ix0 ? p->k_w : p->in_w - ix0;
            const int32_t n = (ky1 - ky0) * (kx1 - kx0);
            for (int c = 0; c < p->c; ++c) {
                int32_t acc = 0;
                for (int ky = ky0; ky < ky1; ++ky)
                    for (int kx = kx0; kx < kx1; ++kx)
                        acc += in[((iy0 + ky) * p->in_w + ix0 + kx) * p->c + c];
                /* round half away from zero, as TFLite does */
                acc = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n;
                *out++ = (int8_t)clamp(acc, p->act_min, p->act_max);
            }
        }
    }
}
