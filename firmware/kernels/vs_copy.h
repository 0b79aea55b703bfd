/* Byte copies and fills for gathering windows (convolution patches, depthwise border windows):
 * short runs, a few to a few hundred bytes, called per output pixel. Inline word loops instead
 * of the C library's memcpy and memset: no call per run, and 470 bytes less flash where they are
 * the only users of the library's two functions. */
#ifndef VS_COPY_H
#define VS_COPY_H

#include <stdint.h>
#include <string.h>

/* A word through an empty asm: GCC would otherwise recognise the loops below as memcpy and
 * memset and call the library again. The memcpy of 4 bytes is one load or store where the CPU
 * takes unaligned words (M3 and later), four byte accesses on M0. */
static inline uint32_t vs_opaque(uint32_t v)
{
    __asm("" : "+r"(v));
    return v;
}

static __attribute__((noinline)) void vs_copy(int8_t *dst, const int8_t *src, int n)
{
    for (; n >= 4; n -= 4, src += 4, dst += 4) {
        uint32_t v;
        memcpy(&v, src, 4);
        v = vs_opaque(v);
        memcpy(dst, &v, 4);
    }
    for (; n > 0; --n) *dst++ = (int8_t)vs_opaque((uint32_t)*src++);
}

static __attribute__((noinline)) void vs_fill(int8_t *dst, int8_t value, int n)
{
    const uint32_t v = (uint8_t)value * UINT32_C(0x01010101);
    for (; n >= 4; n -= 4, dst += 4) {
        const uint32_t w = vs_opaque(v);
        memcpy(dst, &w, 4);
    }
    for (; n > 0; --n) *dst++ = (int8_t)vs_opaque(v);
}

#endif
