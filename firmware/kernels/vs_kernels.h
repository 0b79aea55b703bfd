/* VeriSparse int8 kernels: one function per op, a params struct per op, no allocation and
 * no scratch buffers. Semantics are TFLite's reference integer kernels (as run by TFLM):
 * NHWC tensors of batch 1, int8 activations with zero points, symmetric int8 weights with
 * per-output-channel scales, int32 biases.
 *
 * Every weighted op folds the input zero point into its bias offline:
 *   sum w * (x - zp_in) + b  ==  sum w * x + (b - zp_in * sum w)
 * so the inner loop is one multiply-accumulate. Padding holds the input zero point, which
 * contributes nothing: CONV_2D copies each output pixel's patch, padding included, into a
 * scratch buffer (vs_conv2d_buffer_size bytes, planned in the arena), and DEPTHWISE_CONV_2D
 * does the same for the windows on the image's border (vs_depthwise_conv2d_buffer_size). */
#ifndef VS_KERNELS_H
#define VS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* CONV_2D, and FULLY_CONNECTED as a 1x1 convolution over a 1 x batch image. */
typedef struct {
    uint16_t in_h, in_w, in_c;
    uint16_t out_h, out_w, out_c;
    uint16_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int32_t in_offset;         /* -(input zero point) */
    int32_t out_offset;        /* output zero point */
    int32_t act_min, act_max;  /* fused activation, in output units */
    const int32_t *bias;       /* [out_c] bias + in_offset * sum(weights of the channel) */
    const int32_t *mult;       /* [out_c] requantization significands */
    const int8_t *shift;       /* [out_c] requantization exponents */
} vs_conv_params;

/* Sparse weights, per output channel: count[oc] entries over the channel's flattened
 * (ky, kx, ic) patch, each a step from the previous entry (the first from position 0) and
 * an int8 value. Steps over 255 are split with zero-valued entries. */
typedef struct {
    const uint16_t *count;
    const uint8_t *delta;
    const int8_t *value;
} vs_sparse;

typedef struct {
    uint16_t in_h, in_w, in_c;
    uint16_t out_h, out_w, out_c;  /* out_c = in_c * depth_mult */
    uint16_t depth_mult;
    uint16_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
    int32_t in_offset, out_offset, act_min, act_max;
    const int32_t *bias;
    const int32_t *mult;
    const int8_t *shift;
} vs_depthwise_params;

typedef struct {
    uint16_t in_h, in_w, c;
    uint16_t out_h, out_w;
    uint16_t k_h, k_w, stride_h, stride_w, pad_top, pad_left;
    int32_t act_min, act_max;
} vs_pool_params;

typedef struct {
    uint32_t size;
    int32_t in1_offset, in2_offset;  /* -(zero points) */
    int32_t left_shift;              /* headroom before rescaling the inputs to a common scale */
    int32_t in1_mult, in1_shift, in2_mult, in2_shift;
    int32_t out_mult, out_shift, out_offset;
    int32_t act_min, act_max;
} vs_add_params;

/* Scratch bytes vs_conv2d needs: two patches side by side,
 * 2 * k_h * k_w * in_c (the DSP kernels run two pixels at once), or 0 for a pointwise
 * convolution (1x1, stride 1, no padding: a pixel's channels are already the patch). The
 * convolutions take buffer NULL exactly where their size function gives 0. */
size_t vs_conv2d_buffer_size(const vs_conv_params *p);
/* Scratch bytes vs_conv2d_sparse needs: one patch, k_h * k_w * in_c, or 0 for 1x1 filters */
size_t vs_conv2d_sparse_buffer_size(const vs_conv_params *p);
/* PAD of height and width, with the zero point (TFLite's int8 PAD pads with it) */
typedef struct {
    uint16_t in_h, in_w, c;
    uint16_t out_h, out_w, pad_top, pad_left;
    int32_t value;
} vs_pad_params;

/* weights: int8 [out_c][k_h][k_w][in_c] (TFLite's OHWI layout) */
void vs_conv2d(const vs_conv_params *p, const int8_t *weights, const int8_t *in, int8_t *out, int8_t *buffer);
void vs_conv2d_sparse(const vs_conv_params *p, const vs_sparse *weights, const int8_t *in, int8_t *out,
                      int8_t *buffer);
/* Scratch bytes vs_depthwise_conv2d needs: one window, k_h * k_w * in_c, when some window
 * reaches over the image's border (padding), else 0. */
size_t vs_depthwise_conv2d_buffer_size(const vs_depthwise_params *p);
/* weights: int8 [k_h][k_w][out_c] */
void vs_depthwise_conv2d(const vs_depthwise_params *p, const int8_t *weights, const int8_t *in, int8_t *out,
                         int8_t *buffer);
void vs_max_pool2d(const vs_pool_params *p, const int8_t *in, int8_t *out);
void vs_average_pool2d(const vs_pool_params *p, const int8_t *in, int8_t *out);
void vs_add(const vs_add_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);
void vs_pad(const vs_pad_params *p, const int8_t *in, int8_t *out);
/* SOFTMAX along the last dimension (depth), int8 output of scale 1/256 and zero point -128 */
typedef struct {
    uint32_t outer, depth;
    int32_t input_mult, input_left_shift;  /* beta * input_scale * 2^26, as TFLM prepares it */
    int32_t diff_min;                      /* differences to the row maximum below this give 0 */
} vs_softmax_params;

/* QUANTIZE int8 -> int8, RELU, RELU6, LEAKY_RELU: clamp(out_offset + M * (x - zp_in)), M =
 * pos_mult/pos_shift at or above the input zero point, neg_mult/neg_shift below it */
typedef struct {
    uint32_t size;
    int32_t in_offset;  /* -(input zero point) */
    int32_t pos_mult, pos_shift, neg_mult, neg_shift;
    int32_t out_offset, act_min, act_max;
} vs_rescale_params;

/* MEAN over the middle dimension of [outer][reduce][inner] */
typedef struct {
    uint32_t outer, reduce, inner;
    int32_t sum_offset;  /* -(input zero point) * reduce */
    int32_t mult, shift, out_offset;
} vs_mean_params;

/* CONCATENATION: output = for each of outer: block[0] bytes of input 0, block[1] of input 1, ... */
typedef struct {
    uint32_t outer, count;
    const uint32_t *block;  /* [count] bytes per input per outer index */
} vs_concat_params;

/* LOGISTIC and TANH: the input minus its zero point, scaled into Q4.27 (input_mult, input_shift);
 * beyond +-range_radius the output saturates */
typedef struct {
    uint32_t size;
    int32_t in_zero_point, range_radius, input_mult, input_shift;
} vs_squash_params;

/* MUL, SUB, MAXIMUM, MINIMUM over a 4-D output (leading dimensions 1), each input read with its
 * own element strides, 0 along a dimension it broadcasts; SUB uses every field, MUL the offsets
 * and the output rescaling, MAXIMUM and MINIMUM none of the arithmetic */
typedef struct {
    uint32_t dims[4];
    uint32_t stride1[4], stride2[4];
    int32_t in1_offset, in2_offset, left_shift;
    int32_t in1_mult, in1_shift, in2_mult, in2_shift;
    int32_t out_mult, out_shift, out_offset, act_min, act_max;
} vs_binary_params;
#define VS_AT(s, i0, i1, i2, i3) ((i0) * (s)[0] + (i1) * (s)[1] + (i2) * (s)[2] + (i3) * (s)[3])

/* HARD_SWISH: int16 multipliers (significand >> 16) and exponents, as TFLM prepares them */
typedef struct {
    uint32_t size;
    int32_t in_zero_point, out_zero_point;
    int32_t out_mult, out_shift;          /* input_scale / 128 / output_scale, out_shift <= 0 */
    int32_t reluish_mult, reluish_shift;  /* input_scale / 128 / (3 / 32768) */
} vs_hard_swish_params;

void vs_hard_swish(const vs_hard_swish_params *p, const int8_t *in, int8_t *out);
void vs_logistic(const vs_squash_params *p, const int8_t *in, int8_t *out);
void vs_tanh(const vs_squash_params *p, const int8_t *in, int8_t *out);
void vs_mul(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);
void vs_sub(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);
void vs_maximum(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);
void vs_minimum(const vs_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);
void vs_softmax(const vs_softmax_params *p, const int8_t *in, int8_t *out);
void vs_rescale(const vs_rescale_params *p, const int8_t *in, int8_t *out);
void vs_mean(const vs_mean_params *p, const int8_t *in, int8_t *out);
void vs_concatenation(const vs_concat_params *p, const int8_t *const *in, int8_t *out);
/* RESHAPE only moves bytes, and only when its output cannot share its input's buffer. */
void vs_reshape(size_t size, const int8_t *in, int8_t *out);

/* Memory contract the arena plan (plan.py) relies on; tests/test_firmware_memory.py replays it.
 * In place: vs_add, vs_sub, vs_mul, vs_maximum, vs_minimum, vs_rescale, vs_logistic, vs_tanh,
 *   vs_hard_swish and vs_softmax may be called with out equal to an input of the output's size:
 *   they read element i (softmax: row elements) before writing element i and never read an
 *   element after writing it.
 * Sliding: vs_conv2d, vs_conv2d_sparse, vs_depthwise_conv2d, vs_max_pool2d and vs_average_pool2d
 *   write output pixels in raster order (row by row, left to right), and once any byte of output
 *   pixel (oy, ox) is written, read only input rows from oy * stride_h - pad_top on. Their output
 *   may then start a few rows before their input and run over it. One exception: a pointwise
 *   vs_conv2d with the DSP extension runs pixels in pairs (pixels 2i and 2i + 1 in raster order,
 *   which may lie on two rows) and reads both input pixels until it has written both outputs. */

#endif
