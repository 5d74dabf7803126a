/*
 * tg_startup.c - vector table, reset handler and fault handlers for tinygen firmware.
 *
 * Reset sequence:
 *   1. (asm) SP = __tg_stack_top; enable the FPU (CPACR CP10/CP11 full access) before
 *      any compiler-generated code can touch an FP register; paint the stack and its
 *      guard with TG_STACK_PAINT.
 *   2. (C) copy .data from flash and zero .bss/.tg_arena/bank sections, driven by the
 *      copy/zero tables the linker script builds (so a banked board adds entries, not code);
 *      point VTOR at our table; enable MemManage/BusFault/UsageFault and divide-by-zero
 *      trapping; on a Cortex-M7 invalidate and enable the I- and D-caches (skipped when
 *      CLIDR reports no cache: QEMU accepts the cache maintenance writes as no-ops);
 *      program MPU region 0 as a no-access guard below the stack.
 *      Then the clock-tree bring-up (tg_clock.c: the board's configured clock, or the reset
 *      clock when a ready bit never comes).
 *   3. console (its baud divisor for the clock that runs), counter, main(); tg_exit(main's status).
 *
 * Memory layout symbols come from the generated linker script (templates/firmware/link.ld.j2).
 */
#include <stdint.h>

#include "tg_cmsis_core.h"
#include "tg_runtime.h"
#include "tg_runtime_internal.h"

/* Register fields this file reads or sets that tg_cmsis_core.h does not name (ARMv7-M ARM B3.2,
 * B3.5; Cortex-M7 TRM 4.1). */
#define TG_SCB_CCR_DIV_0_TRP      (1UL << 4) /* integer division by zero faults, not 0 */
#define TG_CLIDR_CTYPE1_MASK      0x7U       /* level-1 cache type; 0 = no cache */
#define TG_CCSIDR_NUMSETS_SHIFT   13U
#define TG_CCSIDR_NUMSETS_MASK    0x7FFFU /* number of sets - 1 */
#define TG_CCSIDR_ASSOC_SHIFT     3U
#define TG_CCSIDR_ASSOC_MASK      0x3FFU /* number of ways - 1 */
#define TG_CCSIDR_LINESIZE_MASK   0x7U   /* log2(words per line) - 2 */
#define TG_CCSIDR_LINESIZE_BIAS   4U     /* LineSize + 4 = log2(bytes per line) */
#define TG_MPU_TYPE_DREGION_SHIFT 8U
#define TG_MPU_TYPE_DREGION_MASK  0xFFU /* number of MPU regions; 0 = no MPU */

int main(void);

typedef void (*tg_vector_t)(void);

typedef struct {
    const uint32_t *src;
    uint32_t *dst;
    uint32_t bytes;
} tg_copy_entry_t;

typedef struct {
    uint32_t *dst;
    uint32_t bytes;
} tg_zero_entry_t;

extern const tg_copy_entry_t __tg_copy_table_start[];
extern const tg_copy_entry_t __tg_copy_table_end[];
extern const tg_zero_entry_t __tg_zero_table_start[];
extern const tg_zero_entry_t __tg_zero_table_end[];

void Reset_Handler(void) __attribute__((naked, noreturn));
void tg_fault_entry(void) __attribute__((naked, noreturn));
void tg_reset_c(void) __attribute__((used, noreturn));
void tg_fault_report(uint32_t sp, uint32_t exc_return, uint32_t ipsr)
    __attribute__((used, noreturn));
static void tg_default_handler(void);

#define TG_XSTR(x) #x
#define TG_STR(x)  TG_XSTR(x)

/* The ARMv7-M vector table: initial SP, then the 15 system exceptions. No device IRQ is
 * enabled by the runtime, so the table stops at SysTick (VTOR alignment: 128 bytes). */
__attribute__((section(".isr_vector"), used, aligned(128))) const tg_vector_t tg_vectors[16] = {
    (tg_vector_t)(uintptr_t)__tg_stack_top, /* 0: initial MSP */
    Reset_Handler,                          /* 1: reset */
    tg_default_handler,                     /* 2: NMI */
    tg_fault_entry,                         /* 3: HardFault */
    tg_fault_entry,                         /* 4: MemManage (stack guard) */
    tg_fault_entry,                         /* 5: BusFault */
    tg_fault_entry,                         /* 6: UsageFault */
    0,
    0,
    0,
    0,                  /* 7-10: reserved */
    tg_default_handler, /* 11: SVCall */
    tg_default_handler, /* 12: DebugMonitor */
    0,                  /* 13: reserved */
    tg_default_handler, /* 14: PendSV */
    tg_systick_handler, /* 15: SysTick (instruction counter wraps) */
};

void Reset_Handler(void)
{
    __asm__ volatile("ldr r0, =__tg_stack_top\n"
                     "mov sp, r0\n"
#if defined(__ARM_FP)
                     "ldr r0, =0xE000ED88\n" /* CPACR: CP10 and CP11 full access */
                     "ldr r1, [r0]\n"
                     "orr r1, r1, #0x00F00000\n"
                     "str r1, [r0]\n"
                     "dsb\n"
                     "isb\n"
#endif
                     "ldr r0, =__tg_stack_guard_start\n"
                     "ldr r1, =__tg_stack_top\n"
                     "ldr r2, =" TG_STR(TG_STACK_PAINT) "\n"
                                                        "1:\n"
                                                        "cmp r0, r1\n"
                                                        "bhs 2f\n"
                                                        "str r2, [r0], #4\n"
                                                        "b 1b\n"
                                                        "2:\n"
                                                        "b tg_reset_c\n"
                                                        ".ltorg\n");
}

static void tg_init_memory(void)
{
    for (const tg_copy_entry_t *e = __tg_copy_table_start; e < __tg_copy_table_end; e++) {
        const volatile uint32_t *src = e->src;
        volatile uint32_t *dst = e->dst;
        for (uint32_t i = 0; i < e->bytes / 4U; i++) {
            dst[i] = src[i];
        }
    }
    for (const tg_zero_entry_t *e = __tg_zero_table_start; e < __tg_zero_table_end; e++) {
        volatile uint32_t *dst = e->dst;
        for (uint32_t i = 0; i < e->bytes / 4U; i++) {
            dst[i] = 0U;
        }
    }
}

#if defined(TG_CORE_CM7) && TG_ENABLE_CACHES
static void tg_enable_caches(void)
{
    /* Tests define TG_TEST_FORCE_CACHES to run the maintenance sequence on QEMU too: it must not
     * fault. */
#if !defined(TG_TEST_FORCE_CACHES)
    if ((TG_SCB->CLIDR & TG_CLIDR_CTYPE1_MASK) == 0U) {
        /* No L1 cache reported: QEMU 7.2's Cortex-M7 reads CLIDR = 0 (caches not modelled). */
        return;
    }
#endif
    /* I-cache: invalidate all, then enable. */
    tg_dsb();
    tg_isb();
    TG_SCB_ICIALLU = 0U;
    tg_dsb();
    tg_isb();
    TG_SCB->CCR |= TG_SCB_CCR_IC;
    tg_dsb();
    tg_isb();
    /* D-cache: select L1 data cache, invalidate every set/way, then enable. */
    TG_SCB->CSSELR = 0U;
    tg_dsb();
    const uint32_t ccsidr = TG_SCB->CCSIDR;
    const uint32_t sets = ((ccsidr >> TG_CCSIDR_NUMSETS_SHIFT) & TG_CCSIDR_NUMSETS_MASK) + 1U;
    const uint32_t ways = ((ccsidr >> TG_CCSIDR_ASSOC_SHIFT) & TG_CCSIDR_ASSOC_MASK) + 1U;
    const uint32_t line_shift = (ccsidr & TG_CCSIDR_LINESIZE_MASK) + TG_CCSIDR_LINESIZE_BIAS;
    const uint32_t way_shift = ways > 1U ? (uint32_t)__builtin_clz(ways - 1U) : 0U;
    for (uint32_t set = 0; set < sets; set++) {
        for (uint32_t way = 0; way < ways; way++) {
            TG_SCB_DCISW = (way << way_shift) | (set << line_shift);
        }
    }
    tg_dsb();
    TG_SCB->CCR |= TG_SCB_CCR_DC;
    tg_dsb();
    tg_isb();
}
#endif

/* MPU region 0: TG_STACK_GUARD_BYTES of no access (privileged included) right below the
 * stack, so the first push past the stack's end faults instead of corrupting memory. */
static void tg_enable_stack_guard(void)
{
    if (((TG_MPU->TYPE >> TG_MPU_TYPE_DREGION_SHIFT) & TG_MPU_TYPE_DREGION_MASK) == 0U) {
        return; /* no MPU: the painted guard is still checked at the end */
    }
    tg_dsb();
    TG_MPU->RNR = 0U;
    TG_MPU->RBAR = (uint32_t)(uintptr_t)__tg_stack_guard_start;
    TG_MPU->RASR = TG_MPU_RASR_XN | TG_MPU_RASR_AP_NONE | TG_MPU_RASR_SIZE(TG_STACK_GUARD_LOG2) |
                   TG_MPU_RASR_ENABLE;
    TG_MPU->CTRL = TG_MPU_CTRL_ENABLE | TG_MPU_CTRL_PRIVDEFENA;
    tg_dsb();
    tg_isb();
}

#if defined(TG_BOARD_EARLY_INIT)
static void tg_set_bits(uint32_t address, uint32_t bits)
{
    *(volatile uint32_t *)(uintptr_t)address |= bits;
}
#endif

/* Board bring-up that must precede memory initialisation (tg_board.h, real boards only): e.g. the
 * STM32H743's D2 SRAM1-3 banks are unclocked at reset. TG_BOARD_EARLY_INIT(set_bits) expands to
 * one set_bits(register address, bits) call per write the board file lists. */
static void tg_board_early_init(void)
{
#if defined(TG_BOARD_EARLY_INIT)
    TG_BOARD_EARLY_INIT(tg_set_bits);
    tg_dsb();
#endif
}

void tg_reset_c(void)
{
    tg_board_early_init();
    tg_init_memory();
    tg_clock_init(); /* the board's configured clock, or the reset clock and the reason */
    TG_SCB->VTOR = (uint32_t)(uintptr_t)tg_vectors;
    TG_SCB->SHCSR |= TG_SCB_SHCSR_MEMFAULTENA | TG_SCB_SHCSR_BUSFAULTENA | TG_SCB_SHCSR_USGFAULTENA;
    TG_SCB->CCR |= TG_SCB_CCR_DIV_0_TRP;
    tg_dsb();
    tg_isb();
#if defined(TG_CORE_CM7) && TG_ENABLE_CACHES
    tg_enable_caches();
#endif
    tg_enable_stack_guard();
    tg_console_init();
    tg_counter_init();
    tg_enable_irq();
    const int status = main();
    tg_exit(status);
}

/* Every fault lands here. The faulting code's stack may be exhausted, so move SP back to
 * the top of the stack region (the interrupted context is never resumed) and report. */
void tg_fault_entry(void)
{
    __asm__ volatile("mrs r0, msp\n"
                     "mov r1, lr\n"
                     "mrs r2, ipsr\n"
                     "ldr r3, =__tg_stack_top\n"
                     "mov sp, r3\n"
                     "b tg_fault_report\n"
                     ".ltorg\n");
}

static const char *tg_exception_name(uint32_t ipsr)
{
    switch (ipsr & 0x1FFU) {
    case 3:
        return "HardFault";
    case 4:
        return "MemManage";
    case 5:
        return "BusFault";
    case 6:
        return "UsageFault";
    default:
        return "exception";
    }
}

void tg_fault_report(uint32_t sp, uint32_t exc_return, uint32_t ipsr)
{
    (void)exc_return;
    TG_MPU->CTRL = 0U; /* the report must be able to read the guard and the stacked frame */
    tg_dsb();
    tg_isb();
    const uint32_t cfsr = TG_SCB->CFSR;
    const uint32_t hfsr = TG_SCB->HFSR;
    const uint32_t mmfar = TG_SCB->MMFAR;
    const uint32_t guard_lo = (uint32_t)(uintptr_t)__tg_stack_guard_start;
    const uint32_t limit = (uint32_t)(uintptr_t)__tg_stack_limit;
    const uint32_t top = (uint32_t)(uintptr_t)__tg_stack_top;
    const int stack_overflow =
        sp < limit || (cfsr & (TG_CFSR_MSTKERR | TG_CFSR_STKERR)) != 0U ||
        ((cfsr & TG_CFSR_MMARVALID) != 0U && mmfar >= guard_lo && mmfar < limit);
    if (stack_overflow) {
        tg_puts("TG FAIL stack overflow: the stack (");
        tg_put_u32(top - limit);
        tg_puts(" bytes at ");
        tg_put_hex32(limit);
        tg_puts(") ran into its guard; sp=");
        tg_put_hex32(sp);
        tg_puts(" cfsr=");
        tg_put_hex32(cfsr);
        tg_putc('\n');
        tg_exit(TG_EXIT_STACK_OVERFLOW);
    }
    tg_puts("TG FAIL fault ");
    tg_puts(tg_exception_name(ipsr));
    tg_puts(" cfsr=");
    tg_put_hex32(cfsr);
    tg_puts(" hfsr=");
    tg_put_hex32(hfsr);
    if ((cfsr & TG_CFSR_MMARVALID) != 0U) {
        tg_puts(" mmfar=");
        tg_put_hex32(mmfar);
    }
    if ((cfsr & TG_CFSR_BFARVALID) != 0U) {
        tg_puts(" bfar=");
        tg_put_hex32(TG_SCB->BFAR);
    }
    if (sp >= limit && sp + 32U <= top) {
        tg_puts(" pc=");
        tg_put_hex32(((const uint32_t *)(uintptr_t)sp)[6]);
    }
    tg_putc('\n');
    tg_exit(TG_EXIT_FAULT);
}

static void tg_default_handler(void)
{
    tg_puts("TG FAIL unexpected exception\n");
    tg_exit(TG_EXIT_FAULT);
}
