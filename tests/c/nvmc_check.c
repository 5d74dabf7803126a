/*
 * nvmc_check.c - firmware/tg_flash.c's nRF NVMC writer and tg_checkpoint.c on QEMU's micro:bit
 * (nRF51822, whose NVMC model has the nRF52's registers and NOR semantics: a write can only clear
 * bits, and only with CONFIG = WEN). tests/test_flash_writer.py builds and runs it; the exit
 * status is 0, or the number of the first check that failed.
 */
#include <stdint.h>
#include <string.h>

#include "tg_runtime.h"
#include "tg_runtime_internal.h"

#define SYS_WRITE0           0x04U
#define SYS_EXIT_EXTENDED    0x20U
#define ADP_APPLICATION_EXIT 0x20026U
#define MODEL_ID             0x1234ABCDU

void tg_check_reset(void);
extern uint32_t __tg_check_stack_top[];

__attribute__((section(".isr_vector"), used)) static const uintptr_t tg_vectors[2] = {
    (uintptr_t)__tg_check_stack_top, (uintptr_t)tg_check_reset};

uint32_t tg_semihost_call(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void tg_finish(uint32_t status)
{
    const uint32_t block[2] = {ADP_APPLICATION_EXIT, status};
    (void)tg_semihost_call(SYS_EXIT_EXTENDED, block);
    for (;;) {
    }
}

static void tg_expect(int ok, uint32_t check)
{
    if (!ok) {
        (void)tg_semihost_call(SYS_WRITE0, "nvmc_check: a check failed\n");
        tg_finish(check);
    }
}

static uint8_t tg_a[37];
static int32_t tg_b;

static void tg_fill(uint8_t seed)
{
    for (uint32_t i = 0; i < sizeof tg_a; i++) {
        tg_a[i] = (uint8_t)(seed + 7U * i);
    }
    tg_b = -1000 * (int32_t)seed;
}

static int tg_holds(uint8_t seed)
{
    for (uint32_t i = 0; i < sizeof tg_a; i++) {
        if (tg_a[i] != (uint8_t)(seed + 7U * i)) {
            return 0;
        }
    }
    return tg_b == -1000 * (int32_t)seed;
}

void tg_check_reset(void)
{
    const tg_span_t spans[2] = {{tg_a, (uint32_t)sizeof tg_a}, {&tg_b, (uint32_t)sizeof tg_b}};
    uint32_t step = 0;
    uint32_t seq = 0;
    tg_flash_init();
    tg_expect(tg_flash_erase_slot(0) == 0 && tg_flash_erase_slot(1) == 0, 1);
    tg_expect(tg_checkpoint_restore(spans, 2, MODEL_ID, &step, &seq) == 0, 2); /* erased: nothing */

    tg_fill(1);
    tg_expect(tg_checkpoint_save(spans, 2, MODEL_ID, 10, 1) == 0, 3);
    tg_fill(0);
    tg_expect(tg_checkpoint_restore(spans, 2, MODEL_ID, &step, &seq) == 1, 4);
    tg_expect(step == 10 && seq == 1 && tg_holds(1), 5);

    tg_fill(2);
    tg_expect(tg_checkpoint_save(spans, 2, MODEL_ID, 20, 2) == 0, 6); /* slot 0 */
    tg_fill(3);
    tg_expect(tg_checkpoint_save(spans, 2, MODEL_ID, 30, 3) == 0,
              7); /* slot 1: erased, rewritten */
    tg_fill(0);
    tg_expect(tg_checkpoint_restore(spans, 2, MODEL_ID, &step, &seq) == 1, 8);
    tg_expect(step == 30 && seq == 3 && tg_holds(3), 9);

    tg_expect(tg_flash_erase_slot(1) == 0, 10); /* the newest gone: the one before it */
    tg_expect(tg_checkpoint_restore(spans, 2, MODEL_ID, &step, &seq) == 1, 11);
    tg_expect(step == 20 && seq == 2 && tg_holds(2), 12);
    tg_expect(tg_checkpoint_restore(spans, 2, MODEL_ID + 1U, &step, &seq) == 0,
              13); /* another model */

    const uint32_t *slot0 = (const uint32_t *)(uintptr_t)tg_flash_slot_addr(0);
    tg_expect(slot0[0] == 2U && slot0[1] == 20U && slot0[7] == 0x4B434754U, 14); /* in the flash */
    (void)tg_semihost_call(SYS_WRITE0, "nvmc_check: ok\n");
    tg_finish(0);
}
