/*
 * tg_flash.c - the flash writer behind the checkpoint slots, one per board:
 *
 *   TG_FLASH_RAM       QEMU stand-in: the slots are RAM (QEMU's mps2 has no flash controller);
 *                      tg_flash.bin in QEMU's working directory (semihosting file calls) holds
 *                      them between runs, rewritten after every erase and program call. Built
 *                      with -DTG_TEST_POWER_CUT, it reads k from tg_power_cut.txt and stops the
 *                      core right after the k-th programmed word (what a power cut leaves).
 *   TG_FLASH_STM32F7   STM32F7 flash controller (RM0385 3.3): KEYR unlock, sector erase with
 *                      SER + SNB + STRT, word programming with PG and PSIZE x32, poll SR.BSY.
 *   TG_FLASH_NRF52     nRF52 NVMC (nRF52840 PS 4.3): CONFIG = EEN and ERASEPAGE per 4 KB page,
 *                      CONFIG = WEN and a 32-bit store per word, poll READY.
 *   TG_FLASH_STM32H7   STM32H7 bank 2 (RM0433 4.3): KEYR2 unlock, sector erase SER + SNB + START,
 *                      programming in 256-bit flash words (8 stores with PG), poll SR2.QW.
 *
 * The hardware writers are compiled into every real-board image with checkpoints; under QEMU's
 * mps2 the stand-in runs in their place. The NVMC writer also runs against QEMU's nRF51 NVMC
 * model (tests/test_flash_writer.py); the STM32 writers have not run on a board or a model.
 */
#include <stdint.h>
#include <string.h>

#include "tg_cmsis_core.h"
#include "tg_runtime.h"
#include "tg_runtime_internal.h"

#if defined(TG_CKPT_SLOT_BYTES)

#define TG_MMIO(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

uint32_t tg_flash_slot_addr(uint32_t slot)
{
    return TG_CKPT_SLOT0_ADDR + slot * TG_CKPT_SLOT_BYTES;
}

#if defined(TG_FLASH_RAM)
#define SEMIHOST_SYS_OPEN  0x01U
#define SEMIHOST_SYS_CLOSE 0x02U
#define SEMIHOST_SYS_WRITE 0x05U
#define SEMIHOST_SYS_READ  0x06U
#define SEMIHOST_MODE_RB   1U
#define SEMIHOST_MODE_WB   5U
#define TG_FLASH_IMAGE     "tg_flash.bin"
#define TG_FLASH_BYTES     (2U * TG_CKPT_SLOT_BYTES)

static uint8_t *tg_flash_base(void)
{
    return (uint8_t *)(uintptr_t)TG_CKPT_SLOT0_ADDR;
}

/* Open a host file in QEMU's working directory; -1 when it cannot be opened. */
static int32_t tg_host_open(const char *name, uint32_t mode)
{
    const uint32_t block[3] = {(uint32_t)(uintptr_t)name, mode, (uint32_t)strlen(name)};
    return (int32_t)tg_semihost_call(SEMIHOST_SYS_OPEN, block);
}

static void tg_host_close(int32_t handle)
{
    const uint32_t block[1] = {(uint32_t)handle};
    (void)tg_semihost_call(SEMIHOST_SYS_CLOSE, block);
}

/* Read up to `n` bytes; returns the number read. */
static uint32_t tg_host_read(int32_t handle, void *dst, uint32_t n)
{
    const uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)dst, n};
    return n - tg_semihost_call(SEMIHOST_SYS_READ, block);
}

/* The slots as they are now, to tg_flash.bin: what survives the run. */
static void tg_flash_persist(void)
{
    const int32_t handle = tg_host_open(TG_FLASH_IMAGE, SEMIHOST_MODE_WB);
    if (handle != -1) {
        const uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)tg_flash_base(),
                                   TG_FLASH_BYTES};
        (void)tg_semihost_call(SEMIHOST_SYS_WRITE, block);
        tg_host_close(handle);
    }
}

#if defined(TG_TEST_POWER_CUT)
static uint32_t tg_cut_after; /* 0: no cut */
static uint32_t tg_words_programmed;

/* k from tg_power_cut.txt (decimal digits), 0 when the file is absent. */
static uint32_t tg_read_cut(void)
{
    char text[12] = {0};
    const int32_t handle = tg_host_open("tg_power_cut.txt", SEMIHOST_MODE_RB);
    if (handle == -1) {
        return 0;
    }
    const uint32_t n = tg_host_read(handle, text, (uint32_t)sizeof text - 1U);
    tg_host_close(handle);
    uint32_t k = 0;
    for (uint32_t i = 0; i < n && text[i] >= '0' && text[i] <= '9'; i++) {
        k = k * 10U + (uint32_t)(text[i] - '0');
    }
    return k;
}
#endif

void tg_flash_init(void)
{
    memset(tg_flash_base(), 0xFF, TG_FLASH_BYTES); /* erased, unless the image says otherwise */
    const int32_t handle = tg_host_open(TG_FLASH_IMAGE, SEMIHOST_MODE_RB);
    if (handle != -1) {
        (void)tg_host_read(handle, tg_flash_base(), TG_FLASH_BYTES);
        tg_host_close(handle);
    }
#if defined(TG_TEST_POWER_CUT)
    tg_cut_after = tg_read_cut();
#endif
}

int tg_flash_erase_slot(uint32_t slot)
{
    memset(tg_flash_base() + slot * TG_CKPT_SLOT_BYTES, 0xFF, TG_CKPT_SLOT_BYTES);
    tg_flash_persist();
    return 0;
}

int tg_flash_program(uint32_t addr, const uint32_t *words, uint32_t n_words)
{
    volatile uint32_t *dst = (volatile uint32_t *)(uintptr_t)addr;
    for (uint32_t i = 0; i < n_words; i++) {
        dst[i] = words[i];
#if defined(TG_TEST_POWER_CUT)
        tg_words_programmed++;
        if (tg_words_programmed == tg_cut_after) {
            tg_flash_persist();
            tg_puts("TG power cut after flash word ");
            tg_put_u32(tg_words_programmed);
            tg_putc('\n');
            tg_exit(TG_EXIT_POWER_CUT);
        }
#endif
    }
    tg_flash_persist();
    return 0;
}

#elif defined(TG_FLASH_STM32F7)
#define F7_FLASH_BASE   0x40023C00UL
#define F7_FLASH_KEYR   (F7_FLASH_BASE + 0x04U)
#define F7_FLASH_SR     (F7_FLASH_BASE + 0x0CU)
#define F7_FLASH_CR     (F7_FLASH_BASE + 0x10U)
#define F7_KEY1         0x45670123U
#define F7_KEY2         0xCDEF89ABU
#define F7_CR_PG        (1U << 0)
#define F7_CR_SER       (1U << 1)
#define F7_CR_SNB_SHIFT 3U
#define F7_CR_PSIZE_X32 (2U << 8)
#define F7_CR_STRT      (1U << 16)
#define F7_CR_LOCK      (1U << 31)
#define F7_SR_BSY       (1U << 16)
#define F7_SR_ERRORS    0xF2U /* OPERR, WRPERR, PGAERR, PGPERR, ERSERR */

void tg_flash_init(void)
{
}

static int tg_f7_wait(void)
{
    while ((TG_MMIO(F7_FLASH_SR) & F7_SR_BSY) != 0U) {
    }
    const uint32_t errors = TG_MMIO(F7_FLASH_SR) & F7_SR_ERRORS;
    TG_MMIO(F7_FLASH_SR) = errors; /* write 1 to clear */
    return errors == 0U ? 0 : -1;
}

static void tg_f7_unlock(void)
{
    if ((TG_MMIO(F7_FLASH_CR) & F7_CR_LOCK) != 0U) {
        TG_MMIO(F7_FLASH_KEYR) = F7_KEY1;
        TG_MMIO(F7_FLASH_KEYR) = F7_KEY2;
    }
}

int tg_flash_erase_slot(uint32_t slot)
{
    const uint32_t sector = slot == 0U ? TG_CKPT_SLOT0_SECTOR : TG_CKPT_SLOT1_SECTOR;
    tg_f7_unlock();
    (void)tg_f7_wait();
    TG_MMIO(F7_FLASH_CR) = F7_CR_PSIZE_X32 | F7_CR_SER | (sector << F7_CR_SNB_SHIFT);
    TG_MMIO(F7_FLASH_CR) |= F7_CR_STRT;
    const int status = tg_f7_wait();
    TG_MMIO(F7_FLASH_CR) = F7_CR_LOCK;
    return status;
}

int tg_flash_program(uint32_t addr, const uint32_t *words, uint32_t n_words)
{
    int status = 0;
    tg_f7_unlock();
    (void)tg_f7_wait();
    TG_MMIO(F7_FLASH_CR) = F7_CR_PSIZE_X32 | F7_CR_PG;
    for (uint32_t i = 0; i < n_words && status == 0; i++) {
        TG_MMIO(addr + 4U * i) = words[i];
        tg_dsb();
        status = tg_f7_wait();
    }
    TG_MMIO(F7_FLASH_CR) = F7_CR_LOCK;
    return status;
}

#elif defined(TG_FLASH_NRF52)
#define NVMC_BASE      0x4001E000UL
#define NVMC_READY     (NVMC_BASE + 0x400U)
#define NVMC_CONFIG    (NVMC_BASE + 0x504U)
#define NVMC_ERASEPAGE (NVMC_BASE + 0x508U)
#define NVMC_REN       0U
#define NVMC_WEN       1U
#define NVMC_EEN       2U
#if !defined(TG_NVMC_PAGE_BYTES)
#define TG_NVMC_PAGE_BYTES 4096U /* nRF52; the nRF51 (QEMU's microbit, tests) has 1 KB pages */
#endif

void tg_flash_init(void)
{
}

static void tg_nvmc_wait(void)
{
    while ((TG_MMIO(NVMC_READY) & 1U) == 0U) {
    }
}

int tg_flash_erase_slot(uint32_t slot)
{
    TG_MMIO(NVMC_CONFIG) = NVMC_EEN;
    for (uint32_t page = 0; page < TG_CKPT_SLOT_BYTES; page += TG_NVMC_PAGE_BYTES) {
        TG_MMIO(NVMC_ERASEPAGE) = tg_flash_slot_addr(slot) + page;
        tg_nvmc_wait();
    }
    TG_MMIO(NVMC_CONFIG) = NVMC_REN;
    return 0;
}

int tg_flash_program(uint32_t addr, const uint32_t *words, uint32_t n_words)
{
    TG_MMIO(NVMC_CONFIG) = NVMC_WEN;
    for (uint32_t i = 0; i < n_words; i++) {
        TG_MMIO(addr + 4U * i) = words[i];
        tg_nvmc_wait();
    }
    TG_MMIO(NVMC_CONFIG) = NVMC_REN;
    return 0;
}

#elif defined(TG_FLASH_STM32H7)
#define H7_FLASH_BANK2   0x52002100UL
#define H7_KEYR2         (H7_FLASH_BANK2 + 0x04U)
#define H7_CR2           (H7_FLASH_BANK2 + 0x0CU)
#define H7_SR2           (H7_FLASH_BANK2 + 0x10U)
#define H7_CCR2          (H7_FLASH_BANK2 + 0x14U)
#define H7_KEY1          0x45670123U
#define H7_KEY2          0xCDEF89ABU
#define H7_CR_LOCK       (1U << 0)
#define H7_CR_PG         (1U << 1)
#define H7_CR_SER        (1U << 2)
#define H7_CR_PSIZE_X64  (3U << 4)
#define H7_CR_START      (1U << 7)
#define H7_CR_SNB_SHIFT  8U
#define H7_SR_BSY        (1U << 0)
#define H7_SR_QW         (1U << 2)
#define H7_SR_ERRORS     0x07EE0000U /* WRPERR .. DBECCERR */
#define H7_FLASH_WORD_32 8U          /* a 256-bit flash word is 8 words */

void tg_flash_init(void)
{
}

static int tg_h7_wait(void)
{
    while ((TG_MMIO(H7_SR2) & (H7_SR_BSY | H7_SR_QW)) != 0U) {
    }
    const uint32_t errors = TG_MMIO(H7_SR2) & H7_SR_ERRORS;
    TG_MMIO(H7_CCR2) = errors;
    return errors == 0U ? 0 : -1;
}

static void tg_h7_unlock(void)
{
    if ((TG_MMIO(H7_CR2) & H7_CR_LOCK) != 0U) {
        TG_MMIO(H7_KEYR2) = H7_KEY1;
        TG_MMIO(H7_KEYR2) = H7_KEY2;
    }
}

int tg_flash_erase_slot(uint32_t slot)
{
    const uint32_t sector = slot == 0U ? TG_CKPT_SLOT0_SECTOR : TG_CKPT_SLOT1_SECTOR;
    tg_h7_unlock();
    (void)tg_h7_wait();
    TG_MMIO(H7_CR2) = H7_CR_PSIZE_X64 | H7_CR_SER | (sector << H7_CR_SNB_SHIFT);
    TG_MMIO(H7_CR2) |= H7_CR_START;
    const int status = tg_h7_wait();
    TG_MMIO(H7_CR2) = H7_CR_LOCK;
    return status;
}

int tg_flash_program(uint32_t addr, const uint32_t *words, uint32_t n_words)
{
    int status = 0;
    tg_h7_unlock();
    (void)tg_h7_wait();
    TG_MMIO(H7_CR2) = H7_CR_PSIZE_X64 | H7_CR_PG;
    for (uint32_t i = 0; i < n_words && status == 0; i++) {
        TG_MMIO(addr + 4U * i) = words[i];
        if (i % H7_FLASH_WORD_32 == H7_FLASH_WORD_32 - 1U) { /* a full flash word: programmed */
            tg_dsb();
            status = tg_h7_wait();
        }
    }
    TG_MMIO(H7_CR2) = H7_CR_LOCK;
    return status;
}

#else
#error "tg_board.h gives checkpoint slots but no flash writer (TG_FLASH_RAM/STM32F7/NRF52/STM32H7)"
#endif

#endif /* TG_CKPT_SLOT_BYTES */
