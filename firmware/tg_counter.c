/*
 * tg_counter.c - how many instructions (QEMU) or cycles (hardware) a region took.
 *
 * TG_COUNTER_SYSTICK (QEMU mps2 with -icount shift=0): the guest's virtual clock runs
 * at one instruction per ns and SysTick, clocked by the 25 MHz processor clock
 * (CLKSOURCE = 1), advances exactly once per 40 instructions. The 24-bit down-counter
 * runs free from 0xFFFFFF; its interrupt counts wraps (every 2^24 ticks = 671M
 * instructions). tg_counter_start() re-aligns the counter to a tick edge so that a
 * measured region always starts at the same phase: counts repeat exactly run to run.
 * Resolution: TG_INSTR_PER_TICK (40) instructions.
 *
 * TG_COUNTER_DWT (hardware): DWT CYCCNT, widened to 64 bits at every read (a single
 * region must stay under 2^32 cycles: 19.8 s at 216 MHz). QEMU and Renode's STM32F746
 * do not model CYCCNT (it reads 0).
 */
#include <stdint.h>

#include "tg_cmsis_core.h"
#include "tg_runtime.h"
#include "tg_runtime_internal.h"

#if defined(TG_COUNTER_SYSTICK)

static volatile uint32_t tg_systick_wraps;

void tg_systick_handler(void)
{
    tg_systick_wraps++;
}

void tg_counter_init(void)
{
    TG_SysTick->CTRL = 0U;
    TG_SysTick->LOAD = TG_SYSTICK_MAX;
    TG_SysTick->VAL = 0U;
    TG_SysTick->CTRL = TG_SYSTICK_CTRL_CLKSOURCE | TG_SYSTICK_CTRL_TICKINT | TG_SYSTICK_CTRL_ENABLE;
}

void tg_counter_start(void)
{
    TG_SysTick->VAL = 0U; /* clears the counter; it reloads 0xFFFFFF at the next tick edge */
    while (TG_SysTick->VAL == 0U) {
    }
    tg_systick_wraps = 0U;
}

uint64_t tg_counter_elapsed(void)
{
    uint32_t wraps;
    uint32_t val;
    uint32_t again;
    do {
        wraps = tg_systick_wraps;
        val = TG_SysTick->VAL;
        again = tg_systick_wraps;
    } while (wraps != again);
    /* The counter went 0xFFFFFF, ..., 1, 0 (interrupt: wraps++), 0xFFFFFF, ... */
    uint64_t ticks;
    if (val == 0U) {
        ticks = wraps == 0U ? (uint64_t)TG_SYSTICK_MAX : ((uint64_t)wraps << 24) - 1U;
    } else {
        ticks = ((uint64_t)wraps << 24) + (TG_SYSTICK_MAX - val);
    }
    return ticks * TG_INSTR_PER_TICK;
}

#elif defined(TG_COUNTER_DWT)

static uint32_t tg_dwt_last;
static uint64_t tg_dwt_total;

void tg_systick_handler(void)
{
}

void tg_counter_init(void)
{
    TG_COREDEBUG_DEMCR |= TG_DEMCR_TRCENA;
    TG_DWT_LAR = 0xC5ACCE55U; /* unlock (Cortex-M7); ignored where there is no lock */
    TG_DWT->CYCCNT = 0U;
    TG_DWT->CTRL |= TG_DWT_CTRL_CYCCNTENA;
}

void tg_counter_start(void)
{
    tg_dwt_last = TG_DWT->CYCCNT;
    tg_dwt_total = 0U;
}

uint64_t tg_counter_elapsed(void)
{
    const uint32_t now = TG_DWT->CYCCNT;
    tg_dwt_total += (uint32_t)(now - tg_dwt_last);
    tg_dwt_last = now;
    return tg_dwt_total;
}

#else
#error "tg_board.h selects no counter (TG_COUNTER_SYSTICK or TG_COUNTER_DWT)"
#endif
