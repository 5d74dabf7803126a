/*
 * tg_profile.c - where a run's instructions go, per generated function (profile builds only).
 *
 * `tinygen sim --profile` compiles the QEMU image once more with -DTG_PROFILE=1 and
 * -finstrument-functions on the generated model (the runtime, the harness and the
 * cmsis_glue helpers are excluded: they are not layers). GCC then calls the two hooks below
 * at the entry and exit of every function of tg_model.c, inlined ones included. Each call's
 * exclusive count (its counter span minus its instrumented callees') is added to a slot keyed
 * by (function, root), the root being the outermost instrumented function on the stack
 * (tg_infer, tg_train_step, ...). At the end the harness prints one line per slot:
 *
 *   TG profile fn=0x0000a1c5 root=0x0000a0f1 calls=2 instr=1234560
 *
 * and the host names the addresses from the ELF's symbol table. The hooks' own instructions
 * fall in the caller's span: the roots' exclusive counts hold them. Resolution: the counter's
 * (TG_INSTR_PER_TICK instructions under QEMU) per span.
 */
#include <stdint.h>

#include "tg_runtime.h"
#include "tg_runtime_internal.h"

#if defined(TG_PROFILE)

#define TG_PROFILE_SLOTS 512U /* a power of two, more than any model's generated functions */
#define TG_PROFILE_DEPTH 8U   /* the generated code nests root -> layer -> helper at most */

typedef struct {
    uintptr_t fn;
    uintptr_t root;
    uint32_t calls;
    uint64_t count;
} tg_profile_slot_t;

typedef struct {
    uintptr_t fn;
    uint64_t start;
    uint64_t callees; /* inclusive counts of the instrumented functions it called */
} tg_profile_frame_t;

static tg_profile_slot_t tg_profile_slots[TG_PROFILE_SLOTS];
static tg_profile_frame_t tg_profile_stack[TG_PROFILE_DEPTH];
static uint32_t tg_profile_depth;
static uint32_t tg_profile_dropped; /* spans too deep or with no free slot: said at the end */

TG_NO_INSTRUMENT static tg_profile_slot_t *tg_profile_slot(uintptr_t fn, uintptr_t root)
{
    uint32_t i = (uint32_t)((fn >> 1) ^ (root >> 3)) & (TG_PROFILE_SLOTS - 1U);
    for (uint32_t probes = 0; probes < TG_PROFILE_SLOTS; probes++) {
        tg_profile_slot_t *s = &tg_profile_slots[i];
        if (s->fn == fn && s->root == root) {
            return s;
        }
        if (s->fn == 0U) {
            s->fn = fn;
            s->root = root;
            return s;
        }
        i = (i + 1U) & (TG_PROFILE_SLOTS - 1U);
    }
    return 0;
}

TG_NO_INSTRUMENT void __cyg_profile_func_enter(void *fn, void *call_site)
{
    (void)call_site;
    const uint32_t d = tg_profile_depth++;
    if (d < TG_PROFILE_DEPTH) {
        tg_profile_stack[d].fn = (uintptr_t)fn;
        tg_profile_stack[d].callees = 0U;
        /* read last: the bookkeeping above counts to the caller */
        tg_profile_stack[d].start = tg_counter_elapsed();
    }
}

TG_NO_INSTRUMENT void __cyg_profile_func_exit(void *fn, void *call_site)
{
    /* read first: the bookkeeping below counts to the caller */
    const uint64_t now = tg_counter_elapsed();
    (void)fn;
    (void)call_site;
    const uint32_t d = --tg_profile_depth;
    if (d >= TG_PROFILE_DEPTH) {
        tg_profile_dropped++;
        return;
    }
    const tg_profile_frame_t *f = &tg_profile_stack[d];
    const uint64_t inclusive = now - f->start;
    tg_profile_slot_t *s = tg_profile_slot(f->fn, tg_profile_stack[0].fn);
    if (s == 0) {
        tg_profile_dropped++;
    } else {
        s->calls++;
        s->count += inclusive - f->callees;
    }
    if (d > 0U) {
        tg_profile_stack[d - 1U].callees += inclusive;
    }
}

void tg_profile_print(void)
{
    for (uint32_t i = 0; i < TG_PROFILE_SLOTS; i++) {
        const tg_profile_slot_t *s = &tg_profile_slots[i];
        if (s->fn == 0U) {
            continue;
        }
        tg_puts("TG profile fn=");
        tg_put_hex32((uint32_t)s->fn);
        tg_puts(" root=");
        tg_put_hex32((uint32_t)s->root);
        tg_puts(" calls=");
        tg_put_u32(s->calls);
        tg_puts(" " TG_COUNTER_NAME "=");
        tg_put_u64(s->count);
        tg_putc('\n');
    }
    tg_puts("TG profile dropped=");
    tg_put_u32(tg_profile_dropped);
    tg_putc('\n');
}

#else

/* not a profile build: nothing here (ISO C wants a declaration in every translation unit) */
typedef int tg_profile_unused_t;

#endif
