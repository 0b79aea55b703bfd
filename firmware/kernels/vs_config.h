/* Which code paths of the convolution kernel a model needs. This file, as shipped, turns all of
 * them on; `verisparse firmware` writes each project its own, from the shapes and multipliers of
 * the model's layers (firmware/features.py), so that code no layer runs is not compiled: on the
 * smallest models the kernels are most of the flash.
 *
 *   VS_CONV_PAIRS       a dense convolution or fully connected layer has two or more output
 *                       pixels (two pixels per pass with the DSP extension; without it, or
 *                       when 0, pixels run one at a time: slower, same bytes)
 *   VS_CONV_GATHER      a convolution copies patches into its scratch buffer (a filter larger
 *                       than 1x1, or a 1x1 filter with a stride or padding)
 *   VS_CONV_DILATION    a convolution has a dilation other than 1
 *   VS_CONV_LEFT_SHIFT  a convolution's requantization multiplier is 1/2 or more */
#ifndef VS_CONFIG_H
#define VS_CONFIG_H

#define VS_CONV_PAIRS 1
#define VS_CONV_GATHER 1
#define VS_CONV_DILATION 1
#define VS_CONV_LEFT_SHIFT 1

#endif
