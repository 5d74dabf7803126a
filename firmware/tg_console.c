/*
 * tg_console.c - console output for every tinygen target, integers only.
 *
 * Characters collect in a RAM line buffer (the nRF UARTE can only DMA from RAM) and
 * go to the selected driver at every newline or when the buffer is full:
 *
 *   TG_CONSOLE_CMSDK_UART   Arm CMSDK APB UART (QEMU mps2 UART0 at 0x40004000):
 *                           CTRL.TXEN, BAUDDIV >= 16, poll STATE.TXFULL before DATA.
 *   TG_CONSOLE_SEMIHOST     semihosting SYS_WRITE0 (QEMU -semihosting-config target=native
 *                           prints it on its stderr; on hardware only under a debugger).
 *   TG_CONSOLE_STM32_USART  STM32F7/H7 USART (Renode STM32F7_USART): CR1 = UE|TE, then
 *                           poll ISR.TXE and write TDR (offset 0x28); ISR.TC before exit.
 *   TG_CONSOLE_NRF_UARTE    nRF52840 UARTE0 with EasyDMA: TXD.PTR/MAXCNT, TASKS_STARTTX,
 *                           wait EVENTS_ENDTX.
 *
 * Register offsets are from the vendors' reference manuals (CMSDK TRM DDI 0479,
 * STM32F7 RM0385 / STM32H7 RM0433 USART chapter, nRF52840 PS UARTE chapter).
 */
#include <stdint.h>

#include "tg_cmsis_core.h"
#include "tg_runtime.h"
#include "tg_runtime_internal.h"

#define TG_REG(off) (*(volatile uint32_t *)(uintptr_t)(TG_CONSOLE_BASE + (off)))

#define TG_LINE_MAX 128
static char tg_line[TG_LINE_MAX + 1];
static uint32_t tg_line_len;

#if defined(TG_CONSOLE_CMSDK_UART)
#define CMSDK_DATA         0x00U
#define CMSDK_STATE        0x04U
#define CMSDK_CTRL         0x08U
#define CMSDK_BAUDDIV      0x10U
#define CMSDK_STATE_TXFULL (1U << 0)
#define CMSDK_CTRL_TXEN    (1U << 0)
#define CMSDK_BAUDDIV_MIN  16U /* the smallest divider the TRM allows; QEMU ignores the rate */

static void tg_driver_init(void)
{
    TG_REG(CMSDK_BAUDDIV) = CMSDK_BAUDDIV_MIN;
    TG_REG(CMSDK_CTRL) = CMSDK_CTRL_TXEN;
}

static void tg_driver_write(const char *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        while ((TG_REG(CMSDK_STATE) & CMSDK_STATE_TXFULL) != 0U) {
        }
        TG_REG(CMSDK_DATA) = (uint8_t)s[i];
    }
}

static void tg_driver_drain(void)
{
    while ((TG_REG(CMSDK_STATE) & CMSDK_STATE_TXFULL) != 0U) {
    }
}

#elif defined(TG_CONSOLE_SEMIHOST)
#define SEMIHOST_SYS_WRITE0 0x04U /* write a NUL-terminated string to the debug console */

static void tg_driver_init(void)
{
}

static void tg_driver_write(const char *s, uint32_t n)
{
    (void)n; /* tg_line is NUL-terminated by the caller */
    (void)tg_semihost_call(SEMIHOST_SYS_WRITE0, s);
}

static void tg_driver_drain(void)
{
}

#elif defined(TG_CONSOLE_STM32_USART)
#define USART_CR1           0x00U
#define USART_BRR           0x0CU
#define USART_ISR           0x1CU
#define USART_TDR           0x28U
#define USART_CR1_UE        (1U << 0)
#define USART_CR1_TE        (1U << 3)
#define USART_ISR_TC        (1U << 6)
#define USART_ISR_TXE       (1U << 7)
/* GPIO port registers (RM0385/RM0433 GPIO chapter): 2 mode bits and 4 AF bits per pin. */
#define GPIO_MODER          0x00U
#define GPIO_AFRL           0x20U /* alternate function of pins 0..7 */
#define GPIO_AFRH           0x24U /* alternate function of pins 8..15 */
#define GPIO_PINS_PER_AFR   8U
#define GPIO_AF_BITS        4U
#define GPIO_AF_MASK        0xFUL
#define GPIO_MODE_BITS      2U
#define GPIO_MODE_MASK      3UL
#define GPIO_MODE_ALTERNATE 2UL

static void tg_driver_init(void)
{
#if defined(TG_CONSOLE_RCC_REG)
    /* Clock the USART and the TX pin's GPIO port, route the pin to the USART (its alternate
     * function). */
    *(volatile uint32_t *)(uintptr_t)TG_CONSOLE_RCC_REG |= (1UL << TG_CONSOLE_RCC_BIT);
    *(volatile uint32_t *)(uintptr_t)TG_CONSOLE_GPIO_RCC_REG |= (1UL << TG_CONSOLE_GPIO_RCC_BIT);
    tg_dsb();
    const uint32_t pin = TG_CONSOLE_TX_PIN;
    const uint32_t afr_offset = pin < GPIO_PINS_PER_AFR ? GPIO_AFRL : GPIO_AFRH;
    volatile uint32_t *moder = (volatile uint32_t *)(uintptr_t)(TG_CONSOLE_GPIO_BASE + GPIO_MODER);
    volatile uint32_t *afr = (volatile uint32_t *)(uintptr_t)(TG_CONSOLE_GPIO_BASE + afr_offset);
    const uint32_t af_shift = (pin % GPIO_PINS_PER_AFR) * GPIO_AF_BITS;
    const uint32_t mode_shift = pin * GPIO_MODE_BITS;
    *afr = (*afr & ~(GPIO_AF_MASK << af_shift)) | ((uint32_t)TG_CONSOLE_TX_AF << af_shift);
    *moder = (*moder & ~(GPIO_MODE_MASK << mode_shift)) | (GPIO_MODE_ALTERNATE << mode_shift);
#endif
    TG_REG(USART_CR1) = 0U;
    /* The divisor for the kernel clock that runs: the configured one, or the reset clock's when
     * the clock bring-up fell back (tg_clock.c). */
    TG_REG(USART_BRR) = tg_clock_configured() ? TG_CONSOLE_BRR : TG_CONSOLE_BRR_RESET;
    TG_REG(USART_CR1) = USART_CR1_UE | USART_CR1_TE; /* TDR writes are ignored until both are set */
}

static void tg_driver_write(const char *s, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        while ((TG_REG(USART_ISR) & USART_ISR_TXE) == 0U) {
        }
        TG_REG(USART_TDR) = (uint8_t)s[i];
    }
}

static void tg_driver_drain(void)
{
    while ((TG_REG(USART_ISR) & USART_ISR_TC) == 0U) {
    }
}

#elif defined(TG_CONSOLE_NRF_UARTE)
#define UARTE_TASKS_STARTTX 0x008U
#define UARTE_EVENTS_ENDTX  0x120U
#define UARTE_ENABLE        0x500U
#define UARTE_PSEL_TXD      0x50CU
#define UARTE_BAUDRATE      0x524U
#define UARTE_TXD_PTR       0x544U
#define UARTE_TXD_MAXCNT    0x548U
#define UARTE_CONFIG        0x56CU
#define UARTE_ENABLE_UARTE  8U
#define UARTE_BAUD_115200   0x01D7E000U
#define UARTE_CONFIG_8N1    0U /* no parity, one stop bit, no flow control */

static void tg_driver_init(void)
{
    TG_REG(UARTE_ENABLE) = 0U;
    TG_REG(UARTE_PSEL_TXD) = TG_CONSOLE_TX_PIN;
    TG_REG(UARTE_BAUDRATE) = UARTE_BAUD_115200;
    TG_REG(UARTE_CONFIG) = UARTE_CONFIG_8N1;
    TG_REG(UARTE_ENABLE) = UARTE_ENABLE_UARTE;
}

static void tg_driver_write(const char *s, uint32_t n)
{
    if (n == 0U) {
        return;
    }
    TG_REG(UARTE_EVENTS_ENDTX) = 0U;
    TG_REG(UARTE_TXD_PTR) = (uint32_t)(uintptr_t)s; /* EasyDMA: s is tg_line, in RAM */
    TG_REG(UARTE_TXD_MAXCNT) = n;
    TG_REG(UARTE_TASKS_STARTTX) = 1U;
    while (TG_REG(UARTE_EVENTS_ENDTX) == 0U) {
    }
    TG_REG(UARTE_EVENTS_ENDTX) = 0U;
}

static void tg_driver_drain(void)
{
}

#else
#error "tg_board.h selects no console driver (TG_CONSOLE_*)"
#endif

void tg_console_init(void)
{
    tg_line_len = 0;
    tg_driver_init();
}

void tg_console_flush(void)
{
    if (tg_line_len > 0U) {
        tg_line[tg_line_len] = '\0';
        tg_driver_write(tg_line, tg_line_len);
        tg_line_len = 0;
    }
    tg_driver_drain();
}

void tg_putc(char c)
{
    tg_line[tg_line_len++] = c;
    if (c == '\n' || tg_line_len == TG_LINE_MAX) {
        tg_line[tg_line_len] = '\0';
        tg_driver_write(tg_line, tg_line_len);
        tg_line_len = 0;
    }
}

void tg_puts(const char *s)
{
    while (*s != '\0') {
        tg_putc(*s++);
    }
}

void tg_put_u64(uint64_t v)
{
    char digits[20]; /* UINT64_MAX has 20 decimal digits */
    uint32_t n = 0;
    do {
        digits[n++] = (char)('0' + (int)(v % 10U));
        v /= 10U;
    } while (v != 0U);
    while (n > 0U) {
        tg_putc(digits[--n]);
    }
}

void tg_put_u32(uint32_t v)
{
    tg_put_u64(v);
}

void tg_put_i32(int32_t v)
{
    if (v < 0) {
        tg_putc('-');
        tg_put_u64((uint64_t)(-(int64_t)v));
    } else {
        tg_put_u64((uint64_t)v);
    }
}

void tg_put_hex32(uint32_t v)
{
    static const char hex[] = "0123456789abcdef";
    tg_putc('0');
    tg_putc('x');
    for (int shift = 28; shift >= 0; shift -= 4) {
        tg_putc(hex[(v >> shift) & 0xFU]);
    }
}
