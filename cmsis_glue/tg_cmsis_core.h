/*
 * tg_cmsis_core.h - CMSIS-Core-style access to the Cortex-M system registers tinygen's
 * firmware runtime uses: SysTick, SCB (incl. CPACR and the M7 cache maintenance
 * operations), MPU, DWT and CoreDebug, plus the few core intrinsics it needs.
 *
 * Written for tinygen from the ARMv7-M Architecture Reference Manual (DDI 0403,
 * "System Control Space", B3.2) and the Cortex-M7 TRM (cache maintenance, DDI 0489).
 * The layout mirrors CMSIS-Core (`SysTick->VAL`, `SCB->CPACR`, ...) but every name is
 * prefixed `TG_` so this header never collides with a vendor's CMSIS files.
 * Only for Arm targets: the host build of the generated C never includes it.
 */
#ifndef TG_CMSIS_CORE_H
#define TG_CMSIS_CORE_H

#include <stdint.h>

#if !defined(__arm__)
#error "tg_cmsis_core.h is for Cortex-M targets only"
#endif

#define TG_RW volatile uint32_t
#define TG_RO volatile const uint32_t

/* Compile-time check of a register's offset inside its block (C99-compatible). */
#define TG_CHECK_OFFSET(type, member, off)                                                         \
    typedef char tg_check_##type##_##member[(__builtin_offsetof(type, member) == (off)) ? 1 : -1]

/* ---- SysTick (B3.3), 0xE000E010 ---------------------------------------------------- */
typedef struct {
    TG_RW CTRL;  /* 0x00 SYST_CSR: ENABLE, TICKINT, CLKSOURCE, COUNTFLAG */
    TG_RW LOAD;  /* 0x04 SYST_RVR: 24-bit reload value */
    TG_RW VAL;   /* 0x08 SYST_CVR: current value; any write clears it */
    TG_RO CALIB; /* 0x0C SYST_CALIB */
} TG_SysTick_Type;
TG_CHECK_OFFSET(TG_SysTick_Type, VAL, 0x08);

#define TG_SYSTICK_BASE           0xE000E010UL
#define TG_SysTick                ((TG_SysTick_Type *)TG_SYSTICK_BASE)
#define TG_SYSTICK_CTRL_ENABLE    (1UL << 0)
#define TG_SYSTICK_CTRL_TICKINT   (1UL << 1)
#define TG_SYSTICK_CTRL_CLKSOURCE (1UL << 2) /* 1 = processor clock */
#define TG_SYSTICK_CTRL_COUNTFLAG (1UL << 16)
#define TG_SYSTICK_MAX            0x00FFFFFFUL

/* ---- System Control Block (B3.2.2), 0xE000ED00 ------------------------------------- */
typedef struct {
    TG_RO CPUID;      /* 0x00 */
    TG_RW ICSR;       /* 0x04 */
    TG_RW VTOR;       /* 0x08 */
    TG_RW AIRCR;      /* 0x0C */
    TG_RW SCR;        /* 0x10 */
    TG_RW CCR;        /* 0x14 */
    TG_RW SHPR[3];    /* 0x18..0x20 */
    TG_RW SHCSR;      /* 0x24 */
    TG_RW CFSR;       /* 0x28: MMFSR [7:0], BFSR [15:8], UFSR [31:16] */
    TG_RW HFSR;       /* 0x2C */
    TG_RW DFSR;       /* 0x30 */
    TG_RW MMFAR;      /* 0x34 */
    TG_RW BFAR;       /* 0x38 */
    TG_RW AFSR;       /* 0x3C */
    TG_RO ID_PFR[2];  /* 0x40 */
    TG_RO ID_DFR;     /* 0x48 */
    TG_RO ID_AFR;     /* 0x4C */
    TG_RO ID_MMFR[4]; /* 0x50 */
    TG_RO ID_ISAR[5]; /* 0x60 */
    uint32_t reserved0[1];
    TG_RO CLIDR;  /* 0x78 cache level ID (M7) */
    TG_RO CTR;    /* 0x7C cache type (M7) */
    TG_RO CCSIDR; /* 0x80 cache size ID of the level selected by CSSELR (M7) */
    TG_RW CSSELR; /* 0x84 cache size selection (M7) */
    TG_RW CPACR;  /* 0x88 coprocessor access control: CP10/CP11 = FPU */
} TG_SCB_Type;
TG_CHECK_OFFSET(TG_SCB_Type, SHCSR, 0x24);
TG_CHECK_OFFSET(TG_SCB_Type, CLIDR, 0x78);
TG_CHECK_OFFSET(TG_SCB_Type, CPACR, 0x88);

#define TG_SCB_BASE                 0xE000ED00UL
#define TG_SCB                      ((TG_SCB_Type *)TG_SCB_BASE)
#define TG_SCB_CCR_DC               (1UL << 16) /* data cache enable (M7) */
#define TG_SCB_CCR_IC               (1UL << 17) /* instruction cache enable (M7) */
#define TG_SCB_SHCSR_MEMFAULTENA    (1UL << 16)
#define TG_SCB_SHCSR_BUSFAULTENA    (1UL << 17)
#define TG_SCB_SHCSR_USGFAULTENA    (1UL << 18)
#define TG_SCB_CPACR_CP10_CP11_FULL (0xFUL << 20)
/* CFSR bits (B3.2.15) */
#define TG_CFSR_DACCVIOL  (1UL << 1)
#define TG_CFSR_MSTKERR   (1UL << 4)
#define TG_CFSR_MMARVALID (1UL << 7)
#define TG_CFSR_STKERR    (1UL << 12)
#define TG_CFSR_BFARVALID (1UL << 15)

/* Cache maintenance operations (write-only, Cortex-M7 TRM 4.1.x): 0xE000EF50.. */
#define TG_SCB_ICIALLU (*(volatile uint32_t *)0xE000EF50UL) /* invalidate all I-cache to PoU */
#define TG_SCB_DCISW   (*(volatile uint32_t *)0xE000EF60UL) /* invalidate D-cache by set/way */
#define TG_SCB_DCCISW  (*(volatile uint32_t *)0xE000EF74UL) /* clean+invalidate by set/way */

/* Floating-point context control (B3.2.21) */
#define TG_FPU_FPCCR (*(volatile uint32_t *)0xE000EF34UL)

/* ---- MPU, PMSAv7 (B3.5), 0xE000ED90 ------------------------------------------------ */
typedef struct {
    TG_RO TYPE; /* 0x00 DREGION [15:8] */
    TG_RW CTRL; /* 0x04 ENABLE, HFNMIENA, PRIVDEFENA */
    TG_RW RNR;  /* 0x08 */
    TG_RW RBAR; /* 0x0C ADDR | VALID | REGION */
    TG_RW RASR; /* 0x10 XN, AP, TEX/S/C/B, SRD, SIZE, ENABLE */
} TG_MPU_Type;
TG_CHECK_OFFSET(TG_MPU_Type, RASR, 0x10);

#define TG_MPU_BASE                  0xE000ED90UL
#define TG_MPU                       ((TG_MPU_Type *)TG_MPU_BASE)
#define TG_MPU_CTRL_ENABLE           (1UL << 0)
#define TG_MPU_CTRL_PRIVDEFENA       (1UL << 2)
#define TG_MPU_RASR_ENABLE           (1UL << 0)
#define TG_MPU_RASR_SIZE(log2_bytes) ((uint32_t)((log2_bytes)-1) << 1)
#define TG_MPU_RASR_AP_NONE          (0UL << 24) /* no access, privileged or not */
#define TG_MPU_RASR_XN               (1UL << 28)

/* ---- DWT (C1.8), 0xE0001000, and CoreDebug DEMCR ----------------------------------- */
typedef struct {
    TG_RW CTRL;   /* 0x00 CYCCNTENA = bit 0 */
    TG_RW CYCCNT; /* 0x04 */
} TG_DWT_Type;
#define TG_DWT_BASE           0xE0001000UL
#define TG_DWT                ((TG_DWT_Type *)TG_DWT_BASE)
#define TG_DWT_LAR            (*(volatile uint32_t *)0xE0001FB0UL) /* M7 lock: write 0xC5ACCE55 */
#define TG_DWT_CTRL_CYCCNTENA (1UL << 0)
#define TG_DWT_CTRL_NOCYCCNT  (1UL << 25)
#define TG_COREDEBUG_DEMCR    (*(volatile uint32_t *)0xE000EDFCUL)
#define TG_DEMCR_TRCENA       (1UL << 24)

/* ---- Intrinsics --------------------------------------------------------------------- */
static inline __attribute__((always_inline)) void tg_dsb(void)
{
    __asm__ volatile("dsb 0xF" ::: "memory");
}

static inline __attribute__((always_inline)) void tg_isb(void)
{
    __asm__ volatile("isb 0xF" ::: "memory");
}

static inline __attribute__((always_inline)) void tg_disable_irq(void)
{
    __asm__ volatile("cpsid i" ::: "memory");
}

static inline __attribute__((always_inline)) void tg_enable_irq(void)
{
    __asm__ volatile("cpsie i" ::: "memory");
}

static inline __attribute__((always_inline)) void tg_wfi(void)
{
    __asm__ volatile("wfi");
}

static inline __attribute__((always_inline)) uint32_t tg_get_msp(void)
{
    uint32_t sp;
    __asm__ volatile("mrs %0, msp" : "=r"(sp));
    return sp;
}

#endif /* TG_CMSIS_CORE_H */
