/* Test harness: runs the embedded test vectors and prints every output as hex, then what
 * the host needs for its measurements. Lines: "VS-OUT <i> <hex>", "VS-TICKS ...",
 * "VS-STACK <bytes>", "VS-END". Each vector is copied into the arena (vs_model_input()), as an
 * application writes its input there; only vs_model_invoke() is timed. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "vs_platform.h"
#include "vs_vectors.h"

#define CAL_LOOPS 1000000u  /* the calibration loop: 2 instructions per iteration */
#define TIMED_RUNS 8u
#define STACK_PAINT 0x5A5A5A5Au

extern uint32_t __stack_limit__;

static void spin(uint32_t n)
{
    __asm volatile(".syntax unified\n1: subs %0, %0, #1\n\tbne 1b" : "+l"(n) : : "cc");  /* l: a low register, for Thumb-1 */
}

/* Paints the free stack, runs the model, and finds the deepest word it changed. The
 * pointer is volatile so the compiler cannot turn the loop into a memset call, whose own
 * stack frame would be painted over. */
static uint32_t stack_used_by_model(void)
{
    memcpy(vs_model_input(), vs_vectors, VS_INPUT_SIZE);
    uint32_t *sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    volatile uint32_t *p;
    for (p = &__stack_limit__; p < sp; ++p) *p = STACK_PAINT;
    vs_model_invoke();
    for (p = &__stack_limit__; p < sp && *p == STACK_PAINT; ++p) {
    }
    return (uint32_t)((uintptr_t)sp - (uintptr_t)p);
}

int main(void)
{
    vs_platform_init();
    for (unsigned i = 0; i < VS_NUM_VECTORS; ++i) {
        memcpy(vs_model_input(), vs_vectors + i * VS_INPUT_SIZE, VS_INPUT_SIZE);
        vs_model_invoke();
        const int8_t *output = vs_model_output();
        printf("VS-OUT %u ", i);
        for (unsigned j = 0; j < VS_OUTPUT_SIZE; ++j) printf("%02x", (unsigned)(uint8_t)output[j]);
        printf("\n");
    }
    uint64_t empty = 0, model = 0;  /* TIMED_RUNS pairs of readings each */
    for (unsigned r = 0; r < TIMED_RUNS; ++r) {
        const uint64_t t0 = vs_platform_ticks();
        empty += vs_platform_ticks() - t0;
    }
    for (unsigned r = 0; r < TIMED_RUNS; ++r) {
        memcpy(vs_model_input(), vs_vectors + (r % VS_NUM_VECTORS) * VS_INPUT_SIZE, VS_INPUT_SIZE);
        const uint64_t t0 = vs_platform_ticks();
        vs_model_invoke();
        model += vs_platform_ticks() - t0;
    }
    const uint64_t t2 = vs_platform_ticks();
    spin(CAL_LOOPS);
    const uint64_t t3 = vs_platform_ticks();
    printf("VS-TICKS empty=%lu model=%lu runs=%u spin=%lu loops=%lu\n", (unsigned long)empty,
           (unsigned long)model, TIMED_RUNS, (unsigned long)(t3 - t2), (unsigned long)CAL_LOOPS);
    printf("VS-STACK %lu\n", (unsigned long)stack_used_by_model());
    printf("VS-END\n");
    vs_platform_exit(0);
    return 0;
}
