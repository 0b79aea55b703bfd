/* Reset handler and vector table for any Cortex-M (ARMv7-M, ARMv7E-M, ARMv8-M Mainline).
 * Copies .data from flash, zeroes .bss, calls main(). Handlers are weak: a platform file
 * (or your application) overrides the ones it needs. */
#include <stdint.h>

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top__;
int main(void);

void Reset_Handler(void);
void Default_Handler(void);
void NMI_Handler(void) __attribute__((weak, alias("Default_Handler")));
void HardFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void MemManage_Handler(void) __attribute__((weak, alias("Default_Handler")));
void BusFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void UsageFault_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SVC_Handler(void) __attribute__((weak, alias("Default_Handler")));
void DebugMon_Handler(void) __attribute__((weak, alias("Default_Handler")));
void PendSV_Handler(void) __attribute__((weak, alias("Default_Handler")));
void SysTick_Handler(void) __attribute__((weak, alias("Default_Handler")));

typedef void (*vs_handler)(void);

/* The 16 system exceptions; no device interrupts are used. */
__attribute__((section(".vectors"), used)) static const vs_handler vs_vector_table[16] = {
    (vs_handler)(uintptr_t)&__stack_top__, Reset_Handler, NMI_Handler, HardFault_Handler,
    MemManage_Handler, BusFault_Handler, UsageFault_Handler, 0, 0, 0, 0,
    SVC_Handler, DebugMon_Handler, 0, PendSV_Handler, SysTick_Handler,
};

void Default_Handler(void)
{
    for (;;) {
    }
}

void Reset_Handler(void)
{
    /* volatile: GCC would turn these loops into memcpy and memset calls, pulling 470 bytes of
     * library code into images whose kernels need neither */
    const uint32_t *src = &__data_load__;
    for (volatile uint32_t *dst = &__data_start__; dst < &__data_end__;) *dst++ = *src++;
    for (volatile uint32_t *dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
    main();
    for (;;) {
    }
}
