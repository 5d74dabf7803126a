/*
 * tg_clock.c - clock-tree bring-up: from the reset clock to the board's configured clock.
 *
 * tinygen derives every value below from the board file's "clock" object (boards/<name>.json,
 * checked against the reference manuals' limits by tinygen/targets/clocks.py) and writes them
 * into tg_board.h, which selects one tree:
 *
 *   TG_CLOCK_STM32F7  RM0385: PLL from the HSI, over-drive, flash wait states with the ART
 *                     accelerator and prefetch, AHB/APB prescalers, then SYSCLK = PLL.
 *   TG_CLOCK_STM32H7  RM0433: supply and voltage scaling (VOS1, then VOS0 on revision V), flash
 *                     wait states, PLL1 from the HSI, CPU/AXI/APB dividers, then SYSCLK = PLL1.
 *   TG_CLOCK_NRF52    nRF52840 PS: the 64 MHz crystal oscillator (HFXO) for an accurate UART.
 *   none              the QEMU image (mps2 has no RCC: TG_CLOCK_SKIPPED) or `--clock reset`.
 *
 * Every wait for a ready bit polls at most TG_CLOCK_READY_POLLS times. When one does not come
 * (or a register does not read back), the bring-up undoes what it changed, the core stays on its
 * reset clock and tg_clock_report() says which bit failed; the run goes on. Nothing numeric
 * depends on the clock: the outputs are the same bits at any speed.
 */
#include <stdint.h>

#include "tg_cmsis_core.h"
#include "tg_runtime.h"
#include "tg_runtime_internal.h"

/* Polls of a ready bit before giving up. A poll is a peripheral read, a test and a branch (3
 * cycles or more), so the bound is at least 47 ms on the fastest reset clock here (the H7's
 * 64 MHz HSI) and 187 ms on the F7's 16 MHz HSI: far beyond the PLL lock times (DS10916,
 * DS12110: a few hundred us at most), the over-drive and voltage-scaling ready times and the
 * nRF52840's HFXO start-up (0.36 ms typical, PS 5.4). A bit that never comes delays the run by
 * that many polls (a fraction of a second where a poll takes a few cycles), then it goes on. */
#define TG_CLOCK_READY_POLLS 1000000
#define TG_CLOCK_XSTR(x)     #x
#define TG_CLOCK_STR(x)      TG_CLOCK_XSTR(x)
#define TG_NOT_SET           "not set after " TG_CLOCK_STR(TG_CLOCK_READY_POLLS) " polls"
#define TG_NOT_CLEAR         "not clear after " TG_CLOCK_STR(TG_CLOCK_READY_POLLS) " polls"
#define TG_NOT_SWITCHED(to)                                                                        \
    "did not report " to " after " TG_CLOCK_STR(TG_CLOCK_READY_POLLS) " polls"

#define TG_REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

static int tg_clock_running_max; /* 1: the configured (maximum) setting runs */
#if !defined(TG_CLOCK_SKIPPED)
/* What went wrong, for the report: the register bit and how (NULL: nothing did). */
static const char *tg_clock_failed_bit;
static const char *tg_clock_failed_how;
static uint32_t tg_clock_failed_value;
static const char *tg_clock_failed_after; /* after the value: NULL when the failure has none */
#endif

#if defined(TG_CLOCK_STM32F7) || defined(TG_CLOCK_STM32H7) || defined(TG_CLOCK_NRF52)
/* 1 once (register & mask) == value, 0 after TG_CLOCK_READY_POLLS polls without it. */
static int tg_clock_wait(uint32_t address, uint32_t mask, uint32_t value)
{
#if defined(TG_TEST_CLOCK_TIMEOUT)
    /* Test-only (tests/test_clock.py): a ready bit of the register at this address never comes,
     * as on hardware that differs; the bring-up must fall back and say so. */
    if (address == (uint32_t)(TG_TEST_CLOCK_TIMEOUT) && value != 0U) {
        return 0;
    }
#endif
    for (uint32_t i = 0; i < (uint32_t)TG_CLOCK_READY_POLLS; i++) {
        if ((TG_REG32(address) & mask) == value) {
            return 1;
        }
    }
    return 0;
}

static int tg_clock_fail(const char *bit, const char *how)
{
    tg_clock_failed_bit = bit;
    tg_clock_failed_how = how;
    return 0;
}

/* The same with the value read: "<how> 0x<value><after>". */
static int tg_clock_fail_value(const char *bit, const char *how, uint32_t value, const char *after)
{
    tg_clock_failed_value = value;
    tg_clock_failed_after = after;
    return tg_clock_fail(bit, how);
}
#endif

/* ---- STM32F7 (RM0385) ------------------------------------------------------------------ */
#if defined(TG_CLOCK_STM32F7)
/* RM0385 5.3: RCC at 0x40023800. */
#define RCC_CR                 0x40023800UL
#define RCC_PLLCFGR            0x40023804UL
#define RCC_CFGR               0x40023808UL
#define RCC_APB1ENR            0x40023840UL
#define RCC_CR_HSION           (1UL << 0)
#define RCC_CR_HSIRDY          (1UL << 1)
#define RCC_CR_PLLON           (1UL << 24)
#define RCC_CR_PLLRDY          (1UL << 25)
#define RCC_PLLCFGR_PLLM_POS   0U
#define RCC_PLLCFGR_PLLN_POS   6U
#define RCC_PLLCFGR_PLLP_POS   16U
#define RCC_PLLCFGR_PLLQ_POS   24U
#define RCC_PLLCFGR_PLLSRC_HSE (1UL << 22) /* clear: the PLL runs from the HSI */
/* PLLM, PLLN, PLLP, PLLSRC, PLLQ: the fields written; the reserved bits keep their values. */
#define RCC_PLLCFGR_FIELDS                                                                         \
    ((0x3FUL << RCC_PLLCFGR_PLLM_POS) | (0x1FFUL << RCC_PLLCFGR_PLLN_POS) |                        \
     (0x3UL << RCC_PLLCFGR_PLLP_POS) | RCC_PLLCFGR_PLLSRC_HSE | (0xFUL << RCC_PLLCFGR_PLLQ_POS))
#define RCC_CFGR_SW_MASK   0x3UL
#define RCC_CFGR_SW_HSI    0x0UL
#define RCC_CFGR_SW_PLL    0x2UL
#define RCC_CFGR_SWS_MASK  (0x3UL << 2)
#define RCC_CFGR_SWS_HSI   (0x0UL << 2)
#define RCC_CFGR_SWS_PLL   (0x2UL << 2)
#define RCC_CFGR_HPRE_POS  4U
#define RCC_CFGR_PPRE1_POS 10U
#define RCC_CFGR_PPRE2_POS 13U
#define RCC_CFGR_PRESCALERS                                                                        \
    ((0xFUL << RCC_CFGR_HPRE_POS) | (0x7UL << RCC_CFGR_PPRE1_POS) | (0x7UL << RCC_CFGR_PPRE2_POS))
#define RCC_APB1ENR_PWREN (1UL << 28)
/* RM0385 4.4: PWR at 0x40007000. */
#define PWR_CR1  0x40007000UL
#define PWR_CSR1 0x40007004UL
#define PWR_CR1_VOS_SCALE1                                                                         \
    (0x3UL << 14) /* needed for 180 MHz and over-drive; set with the PLL off */
#define PWR_CR1_ODEN     (1UL << 16)
#define PWR_CR1_ODSWEN   (1UL << 17)
#define PWR_CSR1_ODRDY   (1UL << 16)
#define PWR_CSR1_ODSWRDY (1UL << 17)
/* RM0385 3.7.1: FLASH_ACR at 0x40023C00. */
#define FLASH_ACR         0x40023C00UL
#define FLASH_ACR_LATENCY 0xFUL
#define FLASH_ACR_PRFTEN  (1UL << 8)
#define FLASH_ACR_ARTEN   (1UL << 9)

/* Back to the reset state: SYSCLK = HSI, prescalers 1, PLL and over-drive off, no wait states
 * (lowered only once the clock is). */
static void tg_clock_undo(void)
{
    TG_REG32(RCC_CFGR) = (TG_REG32(RCC_CFGR) & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_HSI;
    (void)tg_clock_wait(RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_HSI);
    TG_REG32(RCC_CFGR) &= ~RCC_CFGR_PRESCALERS;
    TG_REG32(RCC_CR) &= ~RCC_CR_PLLON;
    TG_REG32(PWR_CR1) &= ~(PWR_CR1_ODEN | PWR_CR1_ODSWEN);
    TG_REG32(FLASH_ACR) &= ~FLASH_ACR_LATENCY;
}

/* RM0385 4.1.4, "Entering Over-drive mode": HSI as SYSCLK, PLL configured and on, ODEN then
 * ODSWEN, flash latency and prescalers, PLL locked, then the switch. */
static int tg_clock_bringup(void)
{
    TG_REG32(RCC_CR) |= RCC_CR_HSION;
    if (!tg_clock_wait(RCC_CR, RCC_CR_HSIRDY, RCC_CR_HSIRDY)) {
        return tg_clock_fail("RCC_CR.HSIRDY", TG_NOT_SET);
    }
    TG_REG32(RCC_CFGR) = (TG_REG32(RCC_CFGR) & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_HSI;
    if (!tg_clock_wait(RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_HSI)) {
        return tg_clock_fail("RCC_CFGR.SWS", TG_NOT_SWITCHED("the HSI"));
    }
    TG_REG32(RCC_CR) &= ~RCC_CR_PLLON; /* PLLCFGR and VOS change only with the PLL off */
    if (!tg_clock_wait(RCC_CR, RCC_CR_PLLRDY, 0U)) {
        return tg_clock_fail("RCC_CR.PLLRDY", TG_NOT_CLEAR);
    }
    TG_REG32(RCC_APB1ENR) |= RCC_APB1ENR_PWREN;
    (void)TG_REG32(RCC_APB1ENR); /* a read-back covers the enable's delay (RM0385 RCC) */
    TG_REG32(PWR_CR1) |= PWR_CR1_VOS_SCALE1;

    TG_REG32(RCC_PLLCFGR) =
        (TG_REG32(RCC_PLLCFGR) & ~RCC_PLLCFGR_FIELDS) | (TG_CLOCK_PLLM << RCC_PLLCFGR_PLLM_POS) |
        (TG_CLOCK_PLLN << RCC_PLLCFGR_PLLN_POS) | (TG_CLOCK_PLLP << RCC_PLLCFGR_PLLP_POS) |
        (TG_CLOCK_PLLQ << RCC_PLLCFGR_PLLQ_POS);
    TG_REG32(RCC_CR) |= RCC_CR_PLLON;
#if TG_CLOCK_OVERDRIVE
    TG_REG32(PWR_CR1) |= PWR_CR1_ODEN;
    if (!tg_clock_wait(PWR_CSR1, PWR_CSR1_ODRDY, PWR_CSR1_ODRDY)) {
        return tg_clock_fail("PWR_CSR1.ODRDY", TG_NOT_SET);
    }
    TG_REG32(PWR_CR1) |= PWR_CR1_ODSWEN;
    if (!tg_clock_wait(PWR_CSR1, PWR_CSR1_ODSWRDY, PWR_CSR1_ODSWRDY)) {
        return tg_clock_fail("PWR_CSR1.ODSWRDY", TG_NOT_SET);
    }
#endif
    /* More wait states before the clock rises; RM0385 3.3.2: check them by reading back. */
    TG_REG32(FLASH_ACR) = (TG_REG32(FLASH_ACR) & ~FLASH_ACR_LATENCY) | TG_CLOCK_FLASH_LATENCY |
                          FLASH_ACR_PRFTEN | FLASH_ACR_ARTEN;
    const uint32_t latency = TG_REG32(FLASH_ACR) & FLASH_ACR_LATENCY;
    if (latency != TG_CLOCK_FLASH_LATENCY) {
        return tg_clock_fail_value("FLASH_ACR.LATENCY", "read back as", latency, "");
    }
    TG_REG32(RCC_CFGR) =
        (TG_REG32(RCC_CFGR) & ~RCC_CFGR_PRESCALERS) | (TG_CLOCK_HPRE << RCC_CFGR_HPRE_POS) |
        (TG_CLOCK_PPRE1 << RCC_CFGR_PPRE1_POS) | (TG_CLOCK_PPRE2 << RCC_CFGR_PPRE2_POS);
    if (!tg_clock_wait(RCC_CR, RCC_CR_PLLRDY, RCC_CR_PLLRDY)) {
        return tg_clock_fail("RCC_CR.PLLRDY", TG_NOT_SET);
    }
    TG_REG32(RCC_CFGR) = (TG_REG32(RCC_CFGR) & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_PLL;
    if (!tg_clock_wait(RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_PLL)) {
        return tg_clock_fail("RCC_CFGR.SWS", TG_NOT_SWITCHED("the PLL"));
    }
    return 1;
}

/* ---- STM32H7 (RM0433) ------------------------------------------------------------------ */
#elif defined(TG_CLOCK_STM32H7)
/* RM0433 8.7: RCC at 0x58024400. */
#define RCC_CR                  0x58024400UL
#define RCC_CFGR                0x58024410UL
#define RCC_D1CFGR              0x58024418UL
#define RCC_D2CFGR              0x5802441CUL
#define RCC_D3CFGR              0x58024420UL
#define RCC_PLLCKSELR           0x58024428UL
#define RCC_PLLCFGR             0x5802442CUL
#define RCC_PLL1DIVR            0x58024430UL
#define RCC_APB4ENR             0x580244F4UL
#define RCC_CR_HSION            (1UL << 0)
#define RCC_CR_HSIRDY           (1UL << 2)
#define RCC_CR_HSIDIV_MASK      (0x3UL << 3) /* 0: HSI = 64 MHz, as the board file assumes */
#define RCC_CR_HSIDIVF          (1UL << 5)   /* the HSI divider's new value has taken effect */
#define RCC_CR_PLL1ON           (1UL << 24)
#define RCC_CR_PLL1RDY          (1UL << 25)
#define RCC_CFGR_SW_MASK        0x7UL
#define RCC_CFGR_SW_HSI         0x0UL
#define RCC_CFGR_SW_PLL1        0x3UL
#define RCC_CFGR_SWS_MASK       (0x7UL << 3)
#define RCC_CFGR_SWS_HSI        (0x0UL << 3)
#define RCC_CFGR_SWS_PLL1       (0x3UL << 3)
#define RCC_D1CFGR_HPRE_POS     0U
#define RCC_D1CFGR_D1PPRE_POS   4U
#define RCC_D1CFGR_D1CPRE_POS   8U
#define RCC_D1CFGR_FIELDS       ((0xFUL << 0) | (0x7UL << 4) | (0xFUL << 8))
#define RCC_D2CFGR_D2PPRE1_POS  4U
#define RCC_D2CFGR_D2PPRE2_POS  8U
#define RCC_D2CFGR_FIELDS       ((0x7UL << 4) | (0x7UL << 8))
#define RCC_D3CFGR_D3PPRE_POS   4U
#define RCC_D3CFGR_FIELDS       (0x7UL << 4)
#define RCC_PLLCKSELR_FIELDS    ((0x3UL << 0) | (0x3FUL << 4)) /* PLLSRC (0: HSI), DIVM1 */
#define RCC_PLLCKSELR_DIVM1_POS 4U
#define RCC_PLLCFGR_PLL1FRACEN  (1UL << 0)
#define RCC_PLLCFGR_PLL1VCOSEL  (1UL << 1)
#define RCC_PLLCFGR_PLL1RGE_POS 2U
#define RCC_PLLCFGR_DIVP1EN     (1UL << 16)
#define RCC_PLLCFGR_DIVQ1EN     (1UL << 17)
#define RCC_PLLCFGR_DIVR1EN     (1UL << 18)
#define RCC_PLLCFGR_PLL1_FIELDS                                                                    \
    (RCC_PLLCFGR_PLL1FRACEN | RCC_PLLCFGR_PLL1VCOSEL | (0x3UL << RCC_PLLCFGR_PLL1RGE_POS) |        \
     RCC_PLLCFGR_DIVP1EN | RCC_PLLCFGR_DIVQ1EN | RCC_PLLCFGR_DIVR1EN)
#define RCC_PLL1DIVR_DIVP1_POS 9U
#define RCC_PLL1DIVR_Q1R1_RESET                                                                    \
    ((1UL << 16) | (1UL << 24)) /* DIVQ1, DIVR1 = /2 as at reset (off) */
#define RCC_APB4ENR_SYSCFGEN     (1UL << 1)
/* RM0433 6.8: PWR at 0x58024800. */
#define PWR_CSR1                 0x58024804UL
#define PWR_CR3                  0x5802480CUL
#define PWR_D3CR                 0x58024818UL
#define PWR_CR3_BYPASS           (1UL << 0)
#define PWR_CR3_LDOEN            (1UL << 1)
#define PWR_CR3_SCUEN            (1UL << 2) /* set until the supply configuration is written once */
#define PWR_CSR1_ACTVOSRDY       (1UL << 13)
#define PWR_D3CR_VOSRDY          (1UL << 13)
#define PWR_D3CR_VOS_MASK        (0x3UL << 14)
#define PWR_D3CR_VOS1            (0x3UL << 14)
/* RM0433 SYSCFG: SYSCFG_PWRCR at 0x5800042C; ODEN over VOS1 gives VOS0. */
#define SYSCFG_PWRCR             0x5800042CUL
#define SYSCFG_PWRCR_ODEN        (1UL << 0)
/* RM0433 FLASH: FLASH_ACR at 0x52002000; reset value 0x37 (LATENCY 7, WRHIGHFREQ 3). */
#define FLASH_ACR                0x52002000UL
#define FLASH_ACR_LATENCY        0xFUL
#define FLASH_ACR_WRHIGHFREQ_POS 4U
#define FLASH_ACR_FIELDS         (FLASH_ACR_LATENCY | (0x3UL << FLASH_ACR_WRHIGHFREQ_POS))
#define FLASH_ACR_RESET          0x37UL
/* RM0433 debug support: DBGMCU_IDC at 0x5C001000, REV_ID in bits 31:16 (0x1003 Y, 0x2003 V). */
#define DBGMCU_IDC               0x5C001000UL
#define DBGMCU_IDC_REV_ID_POS    16U

static void tg_clock_undo(void)
{
    TG_REG32(RCC_CFGR) = (TG_REG32(RCC_CFGR) & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_HSI;
    (void)tg_clock_wait(RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_HSI);
    TG_REG32(RCC_D1CFGR) &= ~RCC_D1CFGR_FIELDS;
    TG_REG32(RCC_D2CFGR) &= ~RCC_D2CFGR_FIELDS;
    TG_REG32(RCC_D3CFGR) &= ~RCC_D3CFGR_FIELDS;
    TG_REG32(RCC_CR) &= ~RCC_CR_PLL1ON;
    TG_REG32(FLASH_ACR) = (TG_REG32(FLASH_ACR) & ~FLASH_ACR_FIELDS) | FLASH_ACR_RESET;
    /* The voltage scale stays raised: it costs power, not correctness. */
}

static int tg_clock_bringup(void)
{
#if defined(TG_CLOCK_REV_ID)
#if defined(TG_TEST_REV_ID)
    /* Test-only: a REV_ID to assume (Renode 1.15.3's stm32h743 maps no DBGMCU; it reads 0). */
    const uint32_t rev = TG_TEST_REV_ID;
#else
    const uint32_t rev = TG_REG32(DBGMCU_IDC) >> DBGMCU_IDC_REV_ID_POS;
#endif
    if (rev != TG_CLOCK_REV_ID) {
        return tg_clock_fail_value("DBGMCU_IDC.REV_ID", "read", rev,
                                   ", not revision V's 0x2003, which VOS0 and this clock need");
    }
#endif
    TG_REG32(RCC_CR) |= RCC_CR_HSION;
    if (!tg_clock_wait(RCC_CR, RCC_CR_HSIRDY, RCC_CR_HSIRDY)) {
        return tg_clock_fail("RCC_CR.HSIRDY", TG_NOT_SET);
    }
    TG_REG32(RCC_CFGR) = (TG_REG32(RCC_CFGR) & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_HSI;
    if (!tg_clock_wait(RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_HSI)) {
        return tg_clock_fail("RCC_CFGR.SWS", TG_NOT_SWITCHED("the HSI"));
    }
    TG_REG32(RCC_CR) &= ~RCC_CR_PLL1ON; /* PLL1's configuration changes only with it off */
    if (!tg_clock_wait(RCC_CR, RCC_CR_PLL1RDY, 0U)) {
        return tg_clock_fail("RCC_CR.PLL1RDY", TG_NOT_CLEAR);
    }
    if ((TG_REG32(RCC_CR) & RCC_CR_HSIDIV_MASK) != 0U) { /* divided by earlier code: undo it */
        TG_REG32(RCC_CR) &= ~RCC_CR_HSIDIV_MASK;
        if (!tg_clock_wait(RCC_CR, RCC_CR_HSIDIVF, RCC_CR_HSIDIVF)) {
            return tg_clock_fail("RCC_CR.HSIDIVF", TG_NOT_SET);
        }
    }
    /* RM0433 PWR: the supply configuration (LDO, as on the NUCLEO-H743ZI) can be written once
     * after power-on; when SCUEN is already clear it was (e.g. by a bootloader) and stays - and
     * if that chose an external supply (BYPASS), the regulator's voltage scales are not ours. */
    const uint32_t supply = TG_REG32(PWR_CR3);
    if ((supply & PWR_CR3_SCUEN) != 0U) {
        TG_REG32(PWR_CR3) = (supply & ~PWR_CR3_BYPASS) | PWR_CR3_LDOEN;
        if (!tg_clock_wait(PWR_CSR1, PWR_CSR1_ACTVOSRDY, PWR_CSR1_ACTVOSRDY)) {
            return tg_clock_fail("PWR_CSR1.ACTVOSRDY", TG_NOT_SET);
        }
    } else if ((supply & PWR_CR3_BYPASS) != 0U) {
        return tg_clock_fail_value(
            "PWR_CR3", "read", supply,
            ": an external core supply (BYPASS) was locked in since power-on");
    }
    /* RM0433 PWR (voltage scaling): VOS1, then (revision V) VOS0 by SYSCFG_PWRCR.ODEN. */
    TG_REG32(PWR_D3CR) = (TG_REG32(PWR_D3CR) & ~PWR_D3CR_VOS_MASK) | PWR_D3CR_VOS1;
    if (!tg_clock_wait(PWR_D3CR, PWR_D3CR_VOSRDY, PWR_D3CR_VOSRDY)) {
        return tg_clock_fail("PWR_D3CR.VOSRDY", TG_NOT_SET);
    }
#if TG_CLOCK_VOS0
    TG_REG32(RCC_APB4ENR) |= RCC_APB4ENR_SYSCFGEN;
    (void)TG_REG32(RCC_APB4ENR); /* the read-back covers the enable's delay */
    TG_REG32(SYSCFG_PWRCR) |= SYSCFG_PWRCR_ODEN;
    if (!tg_clock_wait(PWR_D3CR, PWR_D3CR_VOSRDY, PWR_D3CR_VOSRDY)) {
        return tg_clock_fail("PWR_D3CR.VOSRDY", TG_NOT_SET " (VOS0)");
    }
#endif
    /* Wait states for the AXI clock before it rises, checked by reading back (RM0433 FLASH). */
    TG_REG32(FLASH_ACR) = (TG_REG32(FLASH_ACR) & ~FLASH_ACR_FIELDS) | TG_CLOCK_FLASH_LATENCY |
                          (TG_CLOCK_FLASH_WRHIGHFREQ << FLASH_ACR_WRHIGHFREQ_POS);
    const uint32_t latency = TG_REG32(FLASH_ACR) & FLASH_ACR_LATENCY;
    if (latency != TG_CLOCK_FLASH_LATENCY) {
        return tg_clock_fail_value("FLASH_ACR.LATENCY", "read back as", latency, "");
    }
    /* PLL1 from the HSI: only its P output (SYSCLK) enabled; integer mode. */
    TG_REG32(RCC_PLLCKSELR) = (TG_REG32(RCC_PLLCKSELR) & ~RCC_PLLCKSELR_FIELDS) |
                              (TG_CLOCK_DIVM1 << RCC_PLLCKSELR_DIVM1_POS);
    TG_REG32(RCC_PLLCFGR) = (TG_REG32(RCC_PLLCFGR) & ~RCC_PLLCFGR_PLL1_FIELDS) |
                            (TG_CLOCK_PLL1VCOSEL != 0U ? RCC_PLLCFGR_PLL1VCOSEL : 0UL) |
                            (TG_CLOCK_PLL1RGE << RCC_PLLCFGR_PLL1RGE_POS) | RCC_PLLCFGR_DIVP1EN;
    TG_REG32(RCC_PLL1DIVR) =
        TG_CLOCK_DIVN1 | (TG_CLOCK_DIVP1 << RCC_PLL1DIVR_DIVP1_POS) | RCC_PLL1DIVR_Q1R1_RESET;
    TG_REG32(RCC_CR) |= RCC_CR_PLL1ON;
    if (!tg_clock_wait(RCC_CR, RCC_CR_PLL1RDY, RCC_CR_PLL1RDY)) {
        return tg_clock_fail("RCC_CR.PLL1RDY", TG_NOT_SET);
    }
    /* Dividers before the switch, so no bus ever runs above its maximum. */
    TG_REG32(RCC_D1CFGR) =
        (TG_REG32(RCC_D1CFGR) & ~RCC_D1CFGR_FIELDS) | (TG_CLOCK_HPRE << RCC_D1CFGR_HPRE_POS) |
        (TG_CLOCK_D1PPRE << RCC_D1CFGR_D1PPRE_POS) | (TG_CLOCK_D1CPRE << RCC_D1CFGR_D1CPRE_POS);
    TG_REG32(RCC_D2CFGR) = (TG_REG32(RCC_D2CFGR) & ~RCC_D2CFGR_FIELDS) |
                           (TG_CLOCK_D2PPRE1 << RCC_D2CFGR_D2PPRE1_POS) |
                           (TG_CLOCK_D2PPRE2 << RCC_D2CFGR_D2PPRE2_POS);
    TG_REG32(RCC_D3CFGR) =
        (TG_REG32(RCC_D3CFGR) & ~RCC_D3CFGR_FIELDS) | (TG_CLOCK_D3PPRE << RCC_D3CFGR_D3PPRE_POS);
    TG_REG32(RCC_CFGR) = (TG_REG32(RCC_CFGR) & ~RCC_CFGR_SW_MASK) | RCC_CFGR_SW_PLL1;
    if (!tg_clock_wait(RCC_CFGR, RCC_CFGR_SWS_MASK, RCC_CFGR_SWS_PLL1)) {
        return tg_clock_fail("RCC_CFGR.SWS", TG_NOT_SWITCHED("PLL1"));
    }
    return 1;
}

/* ---- nRF52840 (PS v1.7 5.4) ------------------------------------------------------------- */
#elif defined(TG_CLOCK_NRF52)
#define CLOCK_TASKS_HFCLKSTART    0x40000000UL
#define CLOCK_TASKS_HFCLKSTOP     0x40000004UL
#define CLOCK_EVENTS_HFCLKSTARTED 0x40000100UL
#define CLOCK_HFCLKSTAT           0x4000040CUL
#define CLOCK_HFCLKSTAT_SRC_XTAL  (1UL << 0)
#define CLOCK_HFCLKSTAT_RUNNING   (1UL << 16)
#define CLOCK_EVENT_GENERATED     1UL

static void tg_clock_undo(void)
{
    TG_REG32(CLOCK_TASKS_HFCLKSTOP) = 1U; /* back to HFINT, the reset source */
}

static int tg_clock_bringup(void)
{
    TG_REG32(CLOCK_EVENTS_HFCLKSTARTED) = 0U;
    TG_REG32(CLOCK_TASKS_HFCLKSTART) = 1U;
    if (!tg_clock_wait(CLOCK_EVENTS_HFCLKSTARTED, CLOCK_EVENT_GENERATED, CLOCK_EVENT_GENERATED)) {
        return tg_clock_fail("CLOCK.EVENTS_HFCLKSTARTED", TG_NOT_SET);
    }
    TG_REG32(CLOCK_EVENTS_HFCLKSTARTED) = 0U;
    const uint32_t stat = TG_REG32(CLOCK_HFCLKSTAT);
    if ((stat & (CLOCK_HFCLKSTAT_SRC_XTAL | CLOCK_HFCLKSTAT_RUNNING)) !=
        (CLOCK_HFCLKSTAT_SRC_XTAL | CLOCK_HFCLKSTAT_RUNNING)) {
        return tg_clock_fail_value("CLOCK.HFCLKSTAT", "read", stat, ", not the crystal running");
    }
    return 1;
}
#endif

void tg_clock_init(void)
{
#if defined(TG_CLOCK_STM32F7) || defined(TG_CLOCK_STM32H7) || defined(TG_CLOCK_NRF52)
    if (tg_clock_bringup()) {
        tg_clock_running_max = 1;
    } else {
        tg_clock_undo();
    }
#endif
}

int tg_clock_configured(void)
{
    return tg_clock_running_max;
}

void tg_clock_report(void)
{
#if defined(TG_CLOCK_SKIPPED)
    tg_puts("TG clock" TG_CLOCK_SKIPPED_LINE "\n");
#else
    tg_puts("TG clock");
    tg_puts(tg_clock_running_max ? TG_CLOCK_MAX_LINE : TG_CLOCK_RESET_LINE);
    tg_puts(" clock=" TG_CLOCK_CHOICE);
    if (tg_clock_failed_bit != NULL) {
        tg_puts(" fallback=");
        tg_puts(tg_clock_failed_bit);
        tg_puts(" (");
        tg_puts(tg_clock_failed_how);
        if (tg_clock_failed_after != NULL) {
            tg_putc(' ');
            tg_put_hex32(tg_clock_failed_value);
            tg_puts(tg_clock_failed_after);
        }
        tg_puts(": staying on the reset clock)");
    }
    tg_putc('\n');
#endif
}
