/* The windowed kernels with their output running over their input, as the arena plan places
 * them (firmware/plan.py): the output starts `lead` bytes before the input in one buffer. Each
 * case runs twice on the same random data, once with separate buffers and once overlapped, and
 * prints whether the bytes agree. A kernel that overwrote an input byte before its last read of
 * it would read a changed value there (the inputs are random) and give different bytes.
 * The cases (vs_case cases[]) come from sliding_cases.h, which the test writes. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "vs_kernels.h"
#if defined(__arm__)
#include "vs_platform.h"
#endif

enum { CONV, CONV_SPARSE, DEPTHWISE, MAX_POOL, AVERAGE_POOL };

typedef struct {
    int kind;
    int in_h, in_w, in_c, out_h, out_w, out_c;
    int k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int lead;  /* bytes the output starts before the input */
} vs_case;

#include "sliding_cases.h"

#define MEM 4096
static int8_t input[MEM], separate[MEM], shared[3 * MEM], scratch[MEM], weights[MEM], value[MEM];
static uint8_t delta[MEM];
static uint16_t count[256];
static int32_t bias[256], mult[256];
static int8_t shift[256];
static uint32_t seed = 12345u;

static int rnd(int lo, int hi)
{
    seed = seed * 1664525u + 1013904223u;
    return lo + (int)((seed >> 8) % (uint32_t)(hi - lo + 1));
}

static void run(const vs_case *c, const int8_t *in, int8_t *out)
{
    const int32_t in_offset = 3, out_offset = -5;
    if (c->kind == CONV || c->kind == CONV_SPARSE) {
        const vs_conv_params p = {c->in_h, c->in_w, c->in_c, c->out_h, c->out_w, c->out_c, c->k_h, c->k_w,
                                  c->stride_h, c->stride_w, c->dil_h, c->dil_w, c->pad_top, c->pad_left,
                                  in_offset, out_offset, -128, 127, bias, mult, shift};
        const vs_sparse sparse = {count, delta, value};
        /* as model.c calls them: no buffer where the kernel says it needs none */
        if (c->kind == CONV) vs_conv2d(&p, weights, in, out, vs_conv2d_buffer_size(&p) ? scratch : 0);
        else vs_conv2d_sparse(&p, &sparse, in, out, vs_conv2d_sparse_buffer_size(&p) ? scratch : 0);
    } else if (c->kind == DEPTHWISE) {
        const vs_depthwise_params p = {c->in_h, c->in_w, c->in_c, c->out_h, c->out_w, c->out_c,
                                       (uint16_t)(c->out_c / c->in_c), c->k_h, c->k_w, c->stride_h, c->stride_w,
                                       c->dil_h, c->dil_w, c->pad_top, c->pad_left, in_offset, out_offset, -128,
                                       127, bias, mult, shift};
        vs_depthwise_conv2d(&p, weights, in, out, vs_depthwise_conv2d_buffer_size(&p) ? scratch : 0);
    } else {
        const vs_pool_params p = {c->in_h, c->in_w, c->in_c, c->out_h, c->out_w, c->k_h, c->k_w,
                                  c->stride_h, c->stride_w, c->pad_top, c->pad_left, -128, 127};
        if (c->kind == MAX_POOL) vs_max_pool2d(&p, in, out);
        else vs_average_pool2d(&p, in, out);
    }
}

/* random weights, a third of them zero, and their sparse form ([out_c][k_h][k_w][in_c]) */
static void make_weights(const vs_case *c)
{
    const int n = c->kind == DEPTHWISE ? c->k_h * c->k_w : c->k_h * c->k_w * c->in_c;
    int k = 0;
    for (int oc = 0; oc < c->out_c; ++oc) {
        int last = 0;
        count[oc] = 0;
        for (int i = 0; i < n; ++i) {
            const int8_t w = (int8_t)(rnd(0, 2) ? rnd(-6, 6) : 0);
            if (c->kind == DEPTHWISE) weights[i * c->out_c + oc] = w;
            else weights[oc * n + i] = w;
            if (w) delta[k] = (uint8_t)(i - last), value[k++] = w, last = i, count[oc]++;
        }
        bias[oc] = rnd(-300, 300);
        mult[oc] = rnd(1 << 30, 0x7fffffff);
        shift[oc] = (int8_t)-rnd(3, 6);
    }
}

int main(void)
{
#if defined(__arm__)
    vs_platform_init();
#endif
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
        const vs_case *c = &cases[i];
        const int n_in = c->in_h * c->in_w * c->in_c, n_out = c->out_h * c->out_w * c->out_c;
        make_weights(c);
        for (int j = 0; j < n_in; ++j) input[j] = (int8_t)rnd(-128, 127);
        memset(scratch, 0x55, sizeof scratch);
        run(c, input, separate);
        int8_t *in = shared + MEM;
        memset(shared, 0x55, sizeof shared);
        memcpy(in, input, (size_t)n_in);
        memset(scratch, 0x55, sizeof scratch);
        run(c, in, in - c->lead);
        printf("VS-CASE %u %s\n", i, memcmp(in - c->lead, separate, (size_t)n_out) ? "differs" : "same");
    }
    printf("VS-END\n");
#if defined(__arm__)
    vs_platform_exit(0);
#endif
    return 0;
}
