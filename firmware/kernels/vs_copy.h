/* Byte copies and fills for gathering windows (convolution patches, depthwise border windows):
 * short runs, a few to a few hundred bytes, called per output pixel. Word loops of our own instead
 * of the C library's memcpy and memset: 470 bytes less flash where they are the only users of the
 * library's two functions. */
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

/* n bytes to dst from src, which advances step bytes per word: 4 copies, 0 repeats the word at
 * src (a fill). One loop for both: flash. */
static __attribute__((noinline)) void vs_move(int8_t *dst, const int8_t *src, int step, int n)
{
    int8_t *const end = dst + n;
    for (; end - dst >= 4; src += step, dst += 4) {
        uint32_t v;
        memcpy(&v, src, 4);
        v = vs_opaque(v);
        memcpy(dst, &v, 4);
    }
    for (step >>= 2; dst != end; src += step) *dst++ = (int8_t)vs_opaque((uint32_t)*src);
}

static inline void vs_copy(int8_t *dst, const int8_t *src, int n)
{
    vs_move(dst, src, 4, n);
}

/* pad4: a word of four equal bytes, the fill value */
static inline void vs_fill(int8_t *dst, const uint32_t *pad4, int n)
{
    vs_move(dst, (const int8_t *)pad4, 0, n);
}

/* the word of four bytes v */
static inline uint32_t vs_word4(int8_t v)
{
    return (uint8_t)v * UINT32_C(0x01010101);
}

#endif
