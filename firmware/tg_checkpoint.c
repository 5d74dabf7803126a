/*
 * tg_checkpoint.c - the trained state in flash, safe against a power cut at any word.
 *
 * Two slots; checkpoint `seq` goes to slot seq % 2, so it never overwrites the newest
 * complete one. A slot is a 32-byte header unit then the payload (the state's bytes in
 * span order, padded with 0xFF to the program unit):
 *
 *   header word 0   sequence number
 *   header word 1   training steps taken when it was saved
 *   header word 2   payload bytes
 *   header word 3   the build's model id (a checkpoint of another model is never restored)
 *   header word 4   CRC-32 of words 0..3 and the payload
 *   header word 7   TG_CKPT_MAGIC, the last word programmed: its presence commits the slot
 *
 * Saving erases the slot, programs the payload, then the header. Restoring takes the valid
 * slot (magic, model id, size and CRC) with the larger sequence number.
 */
#include <stdint.h>
#include <string.h>

#include "tg_runtime.h"

#if defined(TG_CKPT_SLOT_BYTES)

#define TG_CKPT_MAGIC        0x4B434754U /* "TGCK" */
#define TG_CKPT_HEADER_WORDS 8U
#define TG_CKPT_HEADER_BYTES (TG_CKPT_HEADER_WORDS * 4U)
#define TG_UNIT_WORDS        (TG_FLASH_PROGRAM_BYTES / 4U)

static uint32_t tg_total_bytes(const tg_span_t *spans, uint32_t n)
{
    uint32_t total = 0;
    for (uint32_t i = 0; i < n; i++) {
        total += spans[i].bytes;
    }
    return total;
}

#define TG_CKPT_CRC_WORDS 4U /* the CRC covers header words 0..3, then the payload */

static uint32_t tg_header_crc(const uint32_t *header, const uint8_t *payload, uint32_t bytes)
{
    return tg_crc32(tg_crc32(0U, header, TG_CKPT_CRC_WORDS * 4U), payload, bytes);
}

/* 1 when `slot` holds a complete checkpoint of model `model_id` with `bytes` payload bytes. */
static int tg_slot_valid(uint32_t slot, uint32_t model_id, uint32_t bytes)
{
    const uint32_t *header = (const uint32_t *)(uintptr_t)tg_flash_slot_addr(slot);
    const uint8_t *payload = (const uint8_t *)header + TG_CKPT_HEADER_BYTES;
    return header[7] == TG_CKPT_MAGIC && header[3] == model_id && header[2] == bytes &&
           header[4] == tg_header_crc(header, payload, bytes);
}

int tg_checkpoint_restore(const tg_span_t *spans, uint32_t n, uint32_t model_id, uint32_t *step,
                          uint32_t *seq)
{
    const uint32_t bytes = tg_total_bytes(spans, n);
    int best = -1;
    uint32_t best_seq = 0;
    for (uint32_t slot = 0; slot < 2U; slot++) {
        const uint32_t *header = (const uint32_t *)(uintptr_t)tg_flash_slot_addr(slot);
        if (tg_slot_valid(slot, model_id, bytes) && (best < 0 || header[0] > best_seq)) {
            best = (int)slot;
            best_seq = header[0];
        }
    }
    if (best < 0) {
        return 0;
    }
    const uint32_t *header = (const uint32_t *)(uintptr_t)tg_flash_slot_addr((uint32_t)best);
    const uint8_t *payload = (const uint8_t *)header + TG_CKPT_HEADER_BYTES;
    for (uint32_t i = 0; i < n; i++) {
        memcpy(spans[i].data, payload, spans[i].bytes);
        payload += spans[i].bytes;
    }
    *seq = header[0];
    *step = header[1];
    return 1;
}

int tg_checkpoint_save(const tg_span_t *spans, uint32_t n, uint32_t model_id, uint32_t step,
                       uint32_t seq)
{
    const uint32_t slot = seq % 2U;
    const uint32_t base = tg_flash_slot_addr(slot);
    const uint32_t bytes = tg_total_bytes(spans, n);
    if (TG_CKPT_HEADER_BYTES + bytes > TG_CKPT_SLOT_BYTES || tg_flash_erase_slot(slot) != 0) {
        return -1;
    }
    uint32_t header[TG_CKPT_HEADER_WORDS];
    memset(header, 0xFF, sizeof header); /* words 4 (the CRC, below), 5 and 6 */
    header[0] = seq;
    header[1] = step;
    header[2] = bytes;
    header[3] = model_id;
    header[7] = TG_CKPT_MAGIC;
    uint32_t crc = tg_crc32(0U, header, TG_CKPT_CRC_WORDS * 4U);

    /* The payload, one program unit at a time. */
    uint32_t unit[TG_UNIT_WORDS];
    uint32_t fill = 0;
    uint32_t addr = base + TG_CKPT_HEADER_BYTES;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *src = (const uint8_t *)spans[i].data;
        crc = tg_crc32(crc, src, spans[i].bytes);
        for (uint32_t b = 0; b < spans[i].bytes; b++) {
            ((uint8_t *)unit)[fill++] = src[b];
            if (fill == TG_FLASH_PROGRAM_BYTES) {
                if (tg_flash_program(addr, unit, TG_UNIT_WORDS) != 0) {
                    return -1;
                }
                addr += TG_FLASH_PROGRAM_BYTES;
                fill = 0;
            }
        }
    }
    if (fill > 0U) {
        memset((uint8_t *)unit + fill, 0xFF, TG_FLASH_PROGRAM_BYTES - fill);
        if (tg_flash_program(addr, unit, TG_UNIT_WORDS) != 0) {
            return -1;
        }
    }

    /* The header last: its final word, the magic, commits the checkpoint. */
    header[4] = crc;
    return tg_flash_program(base, header, TG_CKPT_HEADER_WORDS);
}

#endif /* TG_CKPT_SLOT_BYTES */
