/* Compile-time choice of the Cortex-M DSP extension (M4, M7, M33 with DSP): dual 16-bit
 * multiply-accumulates (SMLAD) on pairs of int8 values sign-extended by SXTB16. Where it is
 * absent (M0, M3, the host) the kernels run their plain C loops, which give the same bytes:
 * every sum is exact in int32 (lower.py refuses models whose accumulators could overflow),
 * so the order of the additions does not matter. */
#ifndef VS_SIMD_H
#define VS_SIMD_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define VS_DSP 1

/* four int8 values from any address (one LDR: the M4 and later load unaligned words) */
static inline int32_t vs_read4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* bytes 0 and 2, and bytes 1 and 3, of v as two int16 pairs */
static inline int32_t vs_even16(int32_t v)
{
    return __sxtb16(v);
}

/* gcc 12 does not fold a rotate into SXTB16's own ROR operand: one instruction, not two */
static inline int32_t vs_odd16(int32_t v)
{
    int32_t r;
    __asm("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#else
#define VS_DSP 0
#endif

#endif
