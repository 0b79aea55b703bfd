/* What the test harness needs from a board: output (printf through newlib), a timer, exit. */
#ifndef VS_PLATFORM_H
#define VS_PLATFORM_H

#include <stdint.h>

void vs_platform_init(void);
/* QEMU boards: SysTick at the CPU clock; under -icount shift=0 a fixed number of
 * instructions per tick (the harness calibrates it). Generic boards: DWT cycle counter. */
uint64_t vs_platform_ticks(void);
void vs_platform_exit(int code);

#endif
