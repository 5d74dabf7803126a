/*
 * tg_stack.c - stack high-water mark and overflow check.
 *
 * The reset handler paints the guard and the stack with TG_STACK_PAINT. The high-water
 * mark is the distance from the top to the lowest word that no longer holds the paint.
 * Overflow = a guard word changed (possible only without an MPU; with one, the first
 * write faults and tg_fault_report says so) or the lowest TG_STACK_LOW_WORDS words of the
 * stack itself are used: the stack came within 16 bytes of its end, which tinygen treats
 * as exhausted rather than trusting luck.
 */
#include <stdint.h>

#include "tg_cmsis_core.h"
#include "tg_runtime.h"
#include "tg_runtime_internal.h"

#define TG_STACK_LOW_WORDS 4U

uint32_t tg_stack_size(void)
{
    return (uint32_t)((uintptr_t)__tg_stack_top - (uintptr_t)__tg_stack_limit);
}

uint32_t tg_stack_used(void)
{
    const volatile uint32_t *p = __tg_stack_limit;
    const volatile uint32_t *top = __tg_stack_top;
    while (p < top && *p == TG_STACK_PAINT) {
        p++;
    }
    return (uint32_t)((uintptr_t)top - (uintptr_t)p);
}

int tg_stack_overflowed(void)
{
    int overflow = 0;
    const uint32_t mpu_ctrl = TG_MPU->CTRL;
    tg_disable_irq();
    TG_MPU->CTRL = 0U; /* the guard is no-access while the MPU is on */
    tg_dsb();
    tg_isb();
    for (const volatile uint32_t *p = __tg_stack_guard_start;
         p < __tg_stack_limit + TG_STACK_LOW_WORDS; p++) {
        if (*p != TG_STACK_PAINT) {
            overflow = 1;
        }
    }
    TG_MPU->CTRL = mpu_ctrl;
    tg_dsb();
    tg_isb();
    tg_enable_irq();
    return overflow;
}

void tg_stack_check_or_fail(void)
{
    if (tg_stack_overflowed()) {
        tg_puts("TG FAIL stack overflow: the stack (");
        tg_put_u32(tg_stack_size());
        tg_puts(" bytes at ");
        tg_put_hex32((uint32_t)(uintptr_t)__tg_stack_limit);
        tg_puts(") was used to its last words or past them; build with a larger --stack\n");
        tg_exit(TG_EXIT_STACK_OVERFLOW);
    }
}
