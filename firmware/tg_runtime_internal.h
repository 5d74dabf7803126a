/*
 * tg_runtime_internal.h - shared between the runtime's own files; not for the harness.
 */
#ifndef TG_RUNTIME_INTERNAL_H
#define TG_RUNTIME_INTERNAL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Stack layout, from the linker script:
 *   __tg_stack_guard_start .. __tg_stack_limit   guard (MPU no access), TG_STACK_GUARD_BYTES
 *   __tg_stack_limit       .. __tg_stack_top     the stack, grows down from __tg_stack_top */
extern uint32_t __tg_stack_guard_start[];
extern uint32_t __tg_stack_limit[];
extern uint32_t __tg_stack_top[];

#define TG_STACK_PAINT       0xC5C5C5C5
#define TG_STACK_GUARD_LOG2  8
#define TG_STACK_GUARD_BYTES (1U << TG_STACK_GUARD_LOG2)

void tg_systick_handler(void);

/* Clock-tree bring-up (tg_clock.c), called by the reset handler after .data/.bss; bounded waits. */
void tg_clock_init(void);
int tg_clock_configured(void); /* 1: the configured clock runs (the console's baud divisor) */

/* GCC's -finstrument-functions hooks (tg_profile.c); never instrumented themselves. */
#define TG_NO_INSTRUMENT __attribute__((no_instrument_function))
#if defined(TG_PROFILE)
TG_NO_INSTRUMENT void __cyg_profile_func_enter(void *fn, void *call_site);
TG_NO_INSTRUMENT void __cyg_profile_func_exit(void *fn, void *call_site);
#endif

/* Arm semihosting call (bkpt 0xAB): op in r0, argument block pointer in r1. Only
 * meaningful under an emulator or debugger that services semihosting. */
uint32_t tg_semihost_call(uint32_t op, const void *arg);

#ifdef __cplusplus
}
#endif

#endif /* TG_RUNTIME_INTERNAL_H */
