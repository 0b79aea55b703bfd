/* PAD: the input, framed by rows and columns of the zero point. */
#include <string.h>

#include "vs_kernels.h"

void vs_pad(const vs_pad_params *p, const int8_t *in, int8_t *out)
{
    for (int oy = 0; oy < p->out_h; ++oy) {
        const int iy = oy - p->pad_top;
        for (int ox = 0; ox < p->out_w; ++ox, out += p->c) {
            const int ix = ox - p->pad_left;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w)
                memset(out, p->value, p->c);
            else
                memcpy(out, in + (iy * p->in_w + ix) * p->c, p->c);
        }
    }
}
