/*
 * tg_runtime.h - tinygen's hand-written Cortex-M runtime (not model specific).
 *
 * What the firmware harness (templates/firmware/main.c.j2) and the generated model
 * code may use: console output (integers only, no printf), an instruction/cycle
 * counter, the stack high-water mark and overflow check, CRC-32 for checksums,
 * and exit with a status. The target is chosen by tg_board.h (generated per build):
 *
 *   TG_TARGET_QEMU  QEMU mps2 stand-in: CMSDK UART (or semihosting) console, exit by
 *                   semihosting SYS_EXIT_EXTENDED, SysTick instruction counter
 *                   (-icount shift=0: one 25 MHz tick per 40 instructions).
 *   otherwise       the real board (hardware or Renode): STM32 USART / nRF UARTE
 *                   console, exit = final line + interrupts off + wfi, DWT CYCCNT.
 *
 * Every line the runtime prints starts with "TG " so a host can parse it.
 */
#ifndef TG_RUNTIME_H
#define TG_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "tg_board.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exit statuses (QEMU returns them as its own exit code). */
#define TG_EXIT_OK             0
#define TG_EXIT_MISMATCH       1 /* outputs differ from the expected ones embedded at build time */
#define TG_EXIT_FAULT          3 /* a HardFault/MemManage/BusFault/UsageFault */
#define TG_EXIT_STACK_OVERFLOW 4 /* the stack ran into its guard */
#define TG_EXIT_POWER_CUT      5 /* TG_TEST_POWER_CUT builds: the core stopped mid-checkpoint */

/* ---- console: buffered, flushed at every newline --------------------------------- */
void tg_console_init(void);
void tg_putc(char c);
void tg_puts(const char *s);
void tg_put_u32(uint32_t v);
void tg_put_i32(int32_t v);
void tg_put_u64(uint64_t v);
void tg_put_hex32(uint32_t v); /* 0x%08x */
void tg_console_flush(void);

/* ---- clock (tg_clock.c) ----------------------------------------------------------------- */
/* Prints "TG clock sysclk=... core=... source=... clock=max|reset" and, when the bring-up fell
 * back to the reset clock, "fallback=<register.bit> (...)"; the QEMU image prints
 * "TG clock bringup=skipped ...". */
void tg_clock_report(void);

/* ---- instruction / cycle counter --------------------------------------------------- */
/* TG_COUNTER_NAME is "instr" (QEMU, SysTick under -icount) or "cycles" (DWT CYCCNT). */
void tg_counter_init(void);
void tg_counter_start(void);       /* zero the counter */
uint64_t tg_counter_elapsed(void); /* instructions or cycles since tg_counter_start() */

/* ---- profile (tg_profile.c, TG_PROFILE builds: `tinygen sim --profile`) ------------- */
#if defined(TG_PROFILE)
/* one "TG profile fn=... root=... calls=... instr=..." line per function */
void tg_profile_print(void);
#endif

/* ---- stack: painted at reset, guard below it (MPU no-access region) ------------------ */
uint32_t tg_stack_size(void);  /* usable bytes (guard excluded) */
uint32_t tg_stack_used(void);  /* high-water mark in bytes */
int tg_stack_overflowed(void); /* 1 when the lowest stack words or the guard were written */
void tg_stack_check_or_fail(
    void); /* prints "TG FAIL stack overflow ..." and exits 4 if overflowed */

/* ---- checksums ------------------------------------------------------------------------ */
/* CRC-32 (IEEE 802.3, reflected, = zlib.crc32): pass 0 to start, the previous value to continue. */
uint32_t tg_crc32(uint32_t crc, const void *data, size_t len);

#if defined(TG_CKPT_SLOT_BYTES)
/* ---- flash writer (tg_flash.c): one per board, selected by tg_board.h --------------------- */
/* Two checkpoint slots of TG_CKPT_SLOT_BYTES each from TG_CKPT_SLOT0_ADDR, each a whole number
 * of erase units. Under QEMU the slots are RAM that tg_flash.bin (in QEMU's working directory,
 * through semihosting) carries from one run to the next. */
void tg_flash_init(void); /* QEMU stand-in: load tg_flash.bin (or start erased) */
uint32_t tg_flash_slot_addr(uint32_t slot);
int tg_flash_erase_slot(uint32_t slot); /* 0: every byte of the slot reads 0xFF */
/* Program `n_words` words at `addr`, lowest address first; `addr` and `n_words * 4` are
 * multiples of TG_FLASH_PROGRAM_BYTES. 0: done. */
int tg_flash_program(uint32_t addr, const uint32_t *words, uint32_t n_words);

/* ---- checkpoints (tg_checkpoint.c): the training state, two slots, sequence + CRC ----- */
typedef struct {
    void *data;
    uint32_t bytes;
} tg_span_t;

/* Restore the newest valid checkpoint into `spans`: 1 and its step and sequence number, or 0
 * (nothing restored) when neither slot holds a complete checkpoint of model `model_id` and
 * this size. */
int tg_checkpoint_restore(const tg_span_t *spans, uint32_t n, uint32_t model_id, uint32_t *step,
                          uint32_t *seq);
/* Save `spans` as checkpoint `seq` (slot seq % 2, the older one) taken after `step` steps. */
int tg_checkpoint_save(const tg_span_t *spans, uint32_t n, uint32_t model_id, uint32_t step,
                       uint32_t seq);
#endif

/* ---- exit ------------------------------------------------------------------------------ */
/* Prints "TG exit <status>", then: QEMU -> semihosting exit with `status`;
 * hardware/Renode -> interrupts off, wfi forever. */
void tg_exit(int status) __attribute__((noreturn));

#ifdef __cplusplus
}
#endif

#endif /* TG_RUNTIME_H */
