/* Generic Cortex-M (ARMv7-M and later): plug in your board here; see README.md.
 *
 * Implement vs_board_init() (clocks, pins, UART) and vs_board_putc() (send one byte) with
 * your vendor HAL; printf reaches them through newlib's _write. Time is the DWT cycle
 * counter: cycles on real hardware, not instructions. */
#include <stdint.h>

#include "vs_platform.h"

#define DEMCR      (*(volatile uint32_t *)0xE000EDFCu)
#define DWT_CTRL   (*(volatile uint32_t *)0xE0001000u)
#define DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)

void vs_board_init(void);
void vs_board_putc(char c);

/* Defaults that do nothing, so the project builds before it is ported: replace them. */
__attribute__((weak)) void vs_board_init(void) {}
__attribute__((weak)) void vs_board_putc(char c) { (void)c; }

int _write(int fd, const char *buf, int len);
int _write(int fd, const char *buf, int len)
{
    (void)fd;
    for (int i = 0; i < len; ++i) {
        if (buf[i] == '\n') vs_board_putc('\r');
        vs_board_putc(buf[i]);
    }
    return len;
}

void vs_platform_init(void)
{
    vs_board_init();
    DEMCR |= 1u << 24;  /* TRCENA: enable the DWT */
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;     /* CYCCNTENA */
}

uint64_t vs_platform_ticks(void)
{
    return DWT_CYCCNT;  /* 32 bits: wraps after 2^32 cycles (about 25 s at 168 MHz) */
}

void vs_platform_exit(int code)
{
    (void)code;
    for (;;) {
    }
}
