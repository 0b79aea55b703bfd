/* QEMU boards (mps2, microbit): output through Arm semihosting (newlib's rdimon), time from SysTick. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "vs_platform.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

extern void initialise_monitor_handles(void);

/* rdimon's C library calls these; nothing to construct or destroy here */
void _init(void) {}
void _fini(void) {}

static volatile uint32_t systick_wraps;

void SysTick_Handler(void)
{
    systick_wraps++;
}

void HardFault_Handler(void)
{
    printf("VS-FAULT hard fault\n");
    exit(3);
}

void vs_platform_init(void)
{
    initialise_monitor_handles();
    SYST_RVR = 0xFFFFFFu;  /* 24-bit down-counter; wraps counted in the interrupt */
    SYST_CVR = 0;
    SYST_CSR = 7u;         /* enable, interrupt, processor clock */
}

uint64_t vs_platform_ticks(void)
{
    uint32_t wraps, value;
    do {
        wraps = systick_wraps;
        value = SYST_CVR;
    } while (wraps != systick_wraps);
    return ((uint64_t)wraps << 24) + (0xFFFFFFu - value);
}

void vs_platform_exit(int code)
{
    exit(code);
}
