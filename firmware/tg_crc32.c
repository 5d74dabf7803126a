/*
 * tg_crc32.c - CRC-32 (IEEE 802.3 polynomial 0xEDB88320, reflected, init and final
 * xor 0xFFFFFFFF): identical to Python's zlib.crc32, so the host can check any buffer
 * the firmware reports. Bitwise, no table: checksums are not on the measured path.
 */
#include <stddef.h>
#include <stdint.h>

#include "tg_runtime.h"

uint32_t tg_crc32(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ (0xEDB88320U & (0U - (crc & 1U)));
        }
    }
    return ~crc;
}
