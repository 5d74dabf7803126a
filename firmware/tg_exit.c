/*
 * tg_exit.c - ending a run with a status.
 *
 * QEMU (TG_EXIT_SEMIHOSTING): semihosting SYS_EXIT_EXTENDED (0x20) with the block
 * {ADP_Stopped_ApplicationExit = 0x20026, status}; QEMU then exits with status & 0xFF.
 * Hardware/Renode: there is nobody to return to, so print the final line, turn
 * interrupts off and sleep in wfi forever (Renode's `cpu ExecutedInstructions` is
 * then final).
 */
#include <stdint.h>

#include "tg_cmsis_core.h"
#include "tg_runtime.h"
#include "tg_runtime_internal.h"

#define TG_SYS_EXIT_EXTENDED            0x20U
#define TG_ADP_STOPPED_APPLICATION_EXIT 0x20026U

uint32_t tg_semihost_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void tg_exit(int status)
{
    tg_puts("TG exit ");
    tg_put_i32(status);
    tg_putc('\n');
    tg_console_flush();
#if defined(TG_EXIT_SEMIHOSTING)
    const uint32_t block[2] = {TG_ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    (void)tg_semihost_call(TG_SYS_EXIT_EXTENDED, block);
#endif
    tg_disable_irq();
    for (;;) {
        tg_dsb();
        tg_wfi();
    }
}
