/*
 * dmagate: a PCIe DMA test device
 *
 * Descriptor rings in guest memory, scatter-gather bus-master DMA through
 * the PCI DMA API (so bus-master enable and the IOMMU apply), a settable
 * timing model, completion records, MSI-X/MSI/INTx, PCI power management,
 * and fault injection through QOM properties. docs/device.md in the
 * dmagate project is the datasheet; dmagate_hw.h carries its numbers.
 *
 * The engine runs from a bottom half and calls out of the device on every
 * DMA access and interrupt message. A guest can aim those at anything,
 * including the device's own config space (an FLR) or its root port's
 * Slot Control (a hot-unplug), so any call out may reset the device or
 * unrealize it under the engine's feet. The rules that keep that safe:
 *  - every reset, disable and unrealize bumps s->epoch; the engine samples
 *    the epoch when it starts and, after each call out, stops at once
 *    (touching no state) if the epoch moved;
 *  - the engine holds a reference on the device while it runs, and drops
 *    it from a separate bottom half once the device is gone, so neither
 *    the state nor the guarded bottom half's re-entrancy guard (which lives
 *    in the device) is freed under it;
 *  - the timer and bottom halves are cancelled at unrealize and freed only
 *    at finalize.
 *
 * Rogue faults (docs/device.md section 8) break the datasheet on purpose:
 * a late or stray write, a completion out of order or with another tag, a
 * delayed interrupt, an interrupt storm, a reset that is ignored, a device
 * that answers nothing. They follow the same rules; a fault that fires
 * emits the DMAGATE_FAULT QMP event (qapi/dmagate.json).
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/error-report.h"
#include "qemu/log.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/range.h"
#include "qemu/rcu.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qapi/error.h"
#include "qapi/qapi-events-dmagate.h"
#include "qapi/visitor.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/pci/pcie.h"
#include "hw/registerfields.h"
#include "migration/vmstate.h"
#include "system/dma.h"
#include "system/runstate.h"

#include "dmagate_hw.h"
#include "dmagate-crc.h"
#include "dmagate-dmalog.h"
#include "dmagate-faults.h"
#include "dmagate-pattern.h"
#include "trace.h"

#define TYPE_DMAGATE "dmagate"
OBJECT_DECLARE_SIMPLE_TYPE(DmagateState, DMAGATE)

REG32(ID, DMAGATE_REG_ID)
REG32(VERSION, DMAGATE_REG_VERSION)
REG32(CAPS, DMAGATE_REG_CAPS)
REG32(MAX_XFER, DMAGATE_REG_MAX_XFER)
REG32(CTRL, DMAGATE_REG_CTRL)
    FIELD(CTRL, ENABLE, 0, 1)
    FIELD(CTRL, RESET, 1, 1)
REG32(STATUS, DMAGATE_REG_STATUS)
    FIELD(STATUS, ENABLED, 0, 1)
    FIELD(STATUS, BUSY, 1, 1)
    FIELD(STATUS, HALTED, 2, 1)
    FIELD(STATUS, STALLED, 3, 1)
REG32(ERROR, DMAGATE_REG_ERROR)
REG32(ERROR_INDEX, DMAGATE_REG_ERROR_INDEX)
REG32(ERROR_ADDR_LO, DMAGATE_REG_ERROR_ADDR_LO)
REG32(ERROR_ADDR_HI, DMAGATE_REG_ERROR_ADDR_HI)
REG32(SQ_BASE_LO, DMAGATE_REG_SQ_BASE_LO)
REG32(SQ_BASE_HI, DMAGATE_REG_SQ_BASE_HI)
REG32(SQ_SIZE, DMAGATE_REG_SQ_SIZE)
REG32(SQ_TAIL, DMAGATE_REG_SQ_TAIL)
REG32(SQ_HEAD, DMAGATE_REG_SQ_HEAD)
REG32(CQ_BASE_LO, DMAGATE_REG_CQ_BASE_LO)
REG32(CQ_BASE_HI, DMAGATE_REG_CQ_BASE_HI)
REG32(CQ_SIZE, DMAGATE_REG_CQ_SIZE)
REG32(CQ_HEAD, DMAGATE_REG_CQ_HEAD)
REG32(CQ_TAIL, DMAGATE_REG_CQ_TAIL)
REG32(INT_STATUS, DMAGATE_REG_INT_STATUS)
    FIELD(INT, COMPLETION, 0, 1)
    FIELD(INT, ERROR, 1, 1)
REG32(INT_MASK, DMAGATE_REG_INT_MASK)
REG32(INT_ACK, DMAGATE_REG_INT_ACK)
REG32(TIME_LO, DMAGATE_REG_TIME_LO)
REG32(TIME_HI, DMAGATE_REG_TIME_HI)

#define DMAGATE_INT_ALL (R_INT_COMPLETION_MASK | R_INT_ERROR_MASK)
/* STATUS bits kept in s->status; BUSY is derived from s->active. */
#define DMAGATE_STATUS_STORED (R_STATUS_ENABLED_MASK | R_STATUS_HALTED_MASK | \
                               R_STATUS_STALLED_MASK)

/* Statistics registers: 64-bit counters from DMAGATE_REG_STAT_DESCRIPTORS. */
enum {
    STAT_DESCRIPTORS,
    STAT_BYTES,
    STAT_INTERRUPTS,
    STAT_ERRORS,
    STAT_FAULTS,
    STAT_COUNT,
};

static const char *const stat_names[STAT_COUNT] = {
    [STAT_DESCRIPTORS] = "stat-descriptors",
    [STAT_BYTES] = "stat-bytes",
    [STAT_INTERRUPTS] = "stat-interrupts",
    [STAT_ERRORS] = "stat-errors",
    [STAT_FAULTS] = "stat-faults",
};

/*
 * Where the descriptor in progress is: moving data, waiting to write its
 * completion (fault-extra-delay-ns), waiting for CQ room for the
 * duplicate record of fault-duplicate-completion; then, with the rogue
 * faults, holding its interrupt (delayed-irq), waiting to write its data
 * again (late-write) and writing it. The stages come in this order.
 */
enum {
    STAGE_DATA,
    STAGE_COMPLETE,
    STAGE_DUPLICATE,
    STAGE_IRQ,
    STAGE_LATE,
    STAGE_LATE_WRITE,
    STAGE_COUNT,
};

/* An out-of-order completion: none, held, or due after the next record. */
enum {
    HELD_NONE,
    HELD_WAITING,
    HELD_RELEASE,
    HELD_COUNT,
};

/* fault-ignore-reset: which resets the device ignores. */
#define DMAGATE_IGNORE_SOFT     1u
#define DMAGATE_IGNORE_FLR      2u

static const char *const ignore_reset_names[] = {
    "none", "soft", "flr", "both",
};

/* A stray write puts this much in the page past a segment. */
#define DMAGATE_STRAY_BYTES 64
#define DMAGATE_PAGE 4096
/* fault-irq-storm-ns: the shortest gap between two storm interrupts */
#define DMAGATE_MIN_STORM_NS 1000

/* A timed step moves at most this much. */
#define DMAGATE_CHUNK (256 * KiB)
#define DMAGATE_CORRUPT_STRIDE 4096

typedef struct DmagateState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;
    QEMUTimer *timer;
    QEMUTimer *storm_timer;
    VMChangeStateEntry *vm_state;
    uint8_t *bounce;
    /* Bumped by reset, disable and unrealize; see the comment at the top. */
    uint32_t epoch;
    bool unrealized;

    /* Registers */
    uint32_t ctrl;
    uint32_t status;
    uint32_t error;
    uint32_t error_index;
    uint64_t error_addr;
    uint64_t sq_base;
    uint32_t sq_size;
    uint32_t sq_head;
    uint32_t sq_tail;
    uint64_t cq_base;
    uint32_t cq_size;
    uint32_t cq_head;
    uint32_t cq_tail;
    uint32_t cq_phase;
    uint32_t int_status;
    uint32_t int_mask;
    uint32_t int_unsignalled;   /* latched while masked, not yet signalled */
    uint32_t time_hi;
    uint64_t stats[STAT_COUNT];

    /* The descriptor in progress (valid while active) */
    bool active;
    uint8_t stage;
    uint32_t index;
    uint8_t opcode;
    uint8_t flags;
    uint32_t tag;
    uint32_t length;
    uint64_t param;
    uint32_t sg_count;
    uint64_t sg_addr[DMAGATE_MAX_SEGMENTS];
    uint32_t sg_len[DMAGATE_MAX_SEGMENTS];
    uint32_t sg_pos;
    uint32_t sg_off;
    uint32_t done;
    uint32_t limit;         /* stop after this many bytes */
    uint16_t result;        /* status reported when done */
    bool accepted;          /* passed the checks: faults may apply */
    uint32_t crc;
    bool corrupt;
    bool drop_irq;
    bool duplicate;
    int64_t due_ns;         /* next chunk, or the completion, not before */
    int64_t cpl_time_ns;    /* timestamp of the record (and its duplicate) */
    uint32_t cpl_tag;       /* the tag the record carries (wrong-tag) */
    bool delayed_irq;
    bool late_write;

    /* Rogue state */
    uint32_t prev_tag;      /* tag of the descriptor taken before */
    bool has_prev_tag;
    bool tag_valid;         /* s->tag is a descriptor's since enable */
    uint8_t held;           /* out-of-order: HELD_* */
    uint8_t held_rec[DMAGATE_CPL_SIZE];
    uint32_t held_causes;
    bool storm_announced;

    /*
     * The MSI-X table and PBA as the stream carries them (VMSTATE_MSIX's
     * layout). msix_load() would send every pending, unmasked vector while
     * the stream is still loading, so the device loads them itself.
     */
    uint8_t msix_state[DMAGATE_MSIX_VECTORS * PCI_MSIX_ENTRY_SIZE +
                       DIV_ROUND_UP(DMAGATE_MSIX_VECTORS, 8)];

    /* Configuration: QOM properties, settable at runtime */
    uint64_t latency_ns;
    uint64_t bandwidth_mbps;
    bool zero_delay;
    uint32_t faults[DMAGATE_FAULT_COUNTED];
    DmagateRuleSet rules;
    uint64_t extra_delay_ns;
    uint64_t late_delay_ns;
    uint64_t irq_delay_ns;
    uint64_t storm_ns;
    uint8_t ignore_reset;   /* DMAGATE_IGNORE_* */
    bool dead;

    /* Every bus access the device made (dmagate-dmalog.h): diagnostics */
    DmagateDmaLog dmalog;
} DmagateState;

/* The engine's allowance for one bottom half. */
typedef struct DmagateBudget {
    uint32_t bytes;
    uint32_t descriptors;
    uint32_t sg_entries;
} DmagateBudget;

static void dmagate_run(void *opaque);

static int64_t dmagate_now(void)
{
    return qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
}

static bool dmagate_enabled(DmagateState *s)
{
    return FIELD_EX32(s->status, STATUS, ENABLED);
}

/* The device was reset, disabled or unplugged since @epoch was sampled. */
static bool dmagate_lost(DmagateState *s, uint32_t epoch)
{
    if (s->epoch != epoch) {
        trace_dmagate_engine_lost(s->epoch - epoch);
        return true;
    }
    return false;
}

static void dmagate_guest_error(DmagateState *s, const char *what,
                                uint32_t code, uint64_t addr)
{
    qemu_log_mask(LOG_GUEST_ERROR, "%s: %s (error %u, address 0x%" PRIx64
                  ")\n", TYPE_DMAGATE, what, code, addr);
    trace_dmagate_guest_error(what, code, addr);
    s->error = code;
    s->error_addr = addr;
}

/* A descriptor the device refuses: logged, the completion says why. */
static uint16_t dmagate_reject(DmagateState *s, const char *why,
                               uint16_t status, uint64_t addr)
{
    qemu_log_mask(LOG_GUEST_ERROR, "%s: sq[%u] tag 0x%x refused: %s "
                  "(status %u, address 0x%" PRIx64 ")\n", TYPE_DMAGATE,
                  s->index, s->tag, why, status, addr);
    trace_dmagate_desc_invalid(s->index, status);
    return status;
}

/*
 * @fault fired: count it, trace it, tell QMP (with the current descriptor
 * if @on_descriptor; @rule: the rule that fired, -1 for a property).
 */
static void dmagate_fired(DmagateState *s, int fault, bool on_descriptor,
                          int rule)
{
    g_autofree char *path = object_get_canonical_path(OBJECT(s));

    s->stats[STAT_FAULTS]++;
    trace_dmagate_fault(dmagate_fault_name(fault),
                        on_descriptor ? s->index : 0, rule);
    qapi_event_send_dmagate_fault(DEVICE(s)->id, path ? path : "",
                                  dmagate_fault_name(fault),
                                  on_descriptor, s->index,
                                  on_descriptor, s->tag,
                                  rule >= 0, rule, dmagate_now());
}

/*
 * Fault knobs and rules: true if @fault fires now on the current
 * descriptor (the caller applies it). Every rule for @fault counts it.
 */
static bool dmagate_fault_fires(DmagateState *s, int fault)
{
    int rule;
    bool fires = dmagate_rules_fire(&s->rules, fault, s->opcode, s->length,
                                    s->index, &rule);

    if (s->faults[fault]) {
        fires = true;
        rule = -1;
        if (s->faults[fault] != DMAGATE_FAULT_ALWAYS) {
            s->faults[fault]--;
        }
    }
    if (fires) {
        dmagate_fired(s, fault, true, rule);
    }
    return fires;
}

/* One access on the bus into the DMA log, for SQ index @index. */
static void dmagate_logged(DmagateState *s, DmagateDmaKind kind, uint64_t addr,
                           uint64_t len, unsigned dir, bool ok, uint32_t index)
{
    dmagate_dmalog_add(&s->dmalog, kind, addr, MIN(len, UINT32_MAX), dir, ok,
                       index, dmagate_now());
}

static bool dmagate_bus_master(DmagateState *s)
{
    return pci_get_word(PCI_DEVICE(s)->config + PCI_COMMAND) &
           PCI_COMMAND_MASTER;
}

/* PCI PM: the function is in D0 (D3hot stops decode and the engine). */
static bool dmagate_in_d0(DmagateState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    return !(pci_get_word(pdev->config + pdev->pm_cap + PCI_PM_CTRL) &
             PCI_PM_CTRL_STATE_MASK);
}

/* Interrupts */

static void dmagate_update_intx(DmagateState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    bool level = false;

    if (!msix_enabled(pdev) && !msi_enabled(pdev) && dmagate_in_d0(s) &&
        !s->dead) {
        level = s->int_status & ~s->int_mask & DMAGATE_INT_ALL;
    }
    /* An assertion that INTx Disable does not hide counts as sent. */
    if (level && !pdev->irq_state &&
        !(pci_get_word(pdev->config + PCI_COMMAND) &
          PCI_COMMAND_INTX_DISABLE)) {
        s->stats[STAT_INTERRUPTS]++;
        trace_dmagate_irq(s->int_status, "intx");
    }
    pci_set_irq(pdev, level);
}

/*
 * One MSI-X or MSI message for @cause; counted only if it leaves the
 * device, and counted before it goes: the message may reset or unplug the
 * device, after which nothing of it may be touched. A dead device sends
 * nothing.
 */
static void dmagate_message(DmagateState *s, uint32_t cause)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    unsigned vector = cause == R_INT_COMPLETION_MASK ?
                      DMAGATE_MSIX_VEC_COMPLETION : DMAGATE_MSIX_VEC_ERROR;

    if (s->dead) {
        return;
    } else if (msix_enabled(pdev)) {
        if (!msix_is_masked(pdev, vector) && dmagate_bus_master(s)) {
            s->stats[STAT_INTERRUPTS]++;
            trace_dmagate_irq(cause, "msix");
            dmagate_logged(s, DMALOG_INTERRUPT,
                           msix_get_message(pdev, vector).address, 4,
                           DMALOG_WRITE, true, DMALOG_NO_INDEX);
        }
        msix_notify(pdev, vector);  /* a masked vector goes to the PBA */
    } else if (msi_enabled(pdev)) {
        if (dmagate_bus_master(s)) {
            s->stats[STAT_INTERRUPTS]++;
            trace_dmagate_irq(cause, "msi");
            dmagate_logged(s, DMALOG_INTERRUPT,
                           msi_get_message(pdev, 0).address, 4, DMALOG_WRITE,
                           true, DMALOG_NO_INDEX);
        }
        msi_notify(pdev, 0);
    }
}

/*
 * Send one message for each cause in @causes that is not masked; causes
 * that are masked, or raised in D3hot, wait in int_unsignalled until their
 * bit is cleared or the function is back in D0. False if the device was
 * lost while a message went out.
 */
static bool dmagate_signal(DmagateState *s, uint32_t causes)
{
    uint32_t epoch = s->epoch;
    uint32_t held = dmagate_in_d0(s) ? s->int_mask : DMAGATE_INT_ALL;

    s->int_unsignalled |= causes & held;
    causes &= ~held;
    s->int_unsignalled &= ~causes;
    for (uint32_t cause = 1; cause & DMAGATE_INT_ALL; cause <<= 1) {
        if (causes & cause) {
            dmagate_message(s, cause);
            if (dmagate_lost(s, epoch)) {
                return false;
            }
        }
    }
    return true;
}

/* Latch @causes; signal those that were not latched already. */
static bool dmagate_raise(DmagateState *s, uint32_t causes)
{
    uint32_t newly = causes & ~s->int_status;

    s->int_status |= causes;
    if (!dmagate_signal(s, newly)) {
        return false;
    }
    dmagate_update_intx(s);
    return true;
}

/* A device error outside any completion: latch it, interrupt, halt. */
static void dmagate_halt(DmagateState *s, const char *what, uint32_t code,
                         uint32_t index, uint64_t addr)
{
    dmagate_guest_error(s, what, code, addr);
    s->error_index = index;
    s->status = FIELD_DP32(s->status, STATUS, HALTED, 1);
    s->stats[STAT_ERRORS]++;
    s->active = false;
    timer_del(s->timer);
    trace_dmagate_halt(code, addr);
    dmagate_raise(s, R_INT_ERROR_MASK);
}

/* Data */

#define DMAGATE_COMPUTE_BLOCK (16 * KiB)

/* TRANSFORM: byte i ^= byte (i mod 8) of @key, a word at a time. */
static void dmagate_xor_key(uint8_t *buf, uint64_t offset, size_t len,
                            uint64_t key)
{
    size_t head = MIN(len, (8 - offset % 8) % 8), i;

    for (i = 0; i < head; i++) {
        buf[i] ^= key >> (8 * ((offset + i) % 8));
    }
    for (; len - i >= 8; i += 8) {
        stq_le_p(buf + i, ldq_le_p(buf + i) ^ key);
    }
    for (; i < len; i++) {
        buf[i] ^= key >> (8 * ((offset + i) % 8));
    }
}

/* fault-corrupt: byte 0 of every 4 KiB of the transfer is flipped. */
static void dmagate_corrupt(uint8_t *buf, uint64_t offset, size_t len)
{
    uint64_t first = ROUND_UP(offset, DMAGATE_CORRUPT_STRIDE);

    for (uint64_t pos = first; pos < offset + len;
         pos += DMAGATE_CORRUPT_STRIDE) {
        buf[pos - offset] ^= 0xff;
    }
}

/*
 * Apply the operation to @len bytes at transfer offset s->done held in
 * @buf (read from memory already for CHECKSUM and TRANSFORM), and fold
 * them into the CRC. Only bytes that were really moved get here.
 */
static void dmagate_compute(DmagateState *s, uint8_t *buf, uint32_t len)
{
    /* In blocks that stay in the host's L1 cache between the two passes. */
    for (uint32_t at = 0, n; at < len; at += n) {
        n = MIN(len - at, DMAGATE_COMPUTE_BLOCK);
        switch (s->opcode) {
        case DMAGATE_OP_FILL:
            dmagate_pattern(buf + at, s->done + at, n, s->param);
            break;
        case DMAGATE_OP_TRANSFORM:
            dmagate_xor_key(buf + at, s->done + at, n, s->param);
            break;
        }
        s->crc = dmagate_crc32(s->crc, buf + at, n);
    }
    if (s->corrupt && s->opcode != DMAGATE_OP_CHECKSUM) {
        dmagate_corrupt(buf, s->done, len);
    }
}

/* How one piece of a segment can be reached, looked up without side effects. */
typedef enum {
    TARGET_RAM,         /* direct: map it and work in place */
    TARGET_MMIO,        /* a device: through the bounce buffer */
    TARGET_SELF,        /* one of our own BARs */
    TARGET_NONE,        /* nothing there, or the IOMMU refuses */
} DmagateTarget;

static DmagateTarget dmagate_lookup(DmagateState *s, uint64_t addr,
                                    uint32_t *len, bool reads, bool is_write)
{
    AddressSpace *as = pci_get_address_space(PCI_DEVICE(s));
    hwaddr xlat, plen = *len;
    MemoryRegion *mr;

    RCU_READ_LOCK_GUARD();
    /* After IOMMU translation: a bus address may be any physical one. */
    mr = address_space_translate(as, addr, &xlat, &plen, is_write,
                                 MEMTXATTRS_UNSPECIFIED);
    *len = MIN(plen, *len);
    if (is_write && reads) {
        /* TRANSFORM also reads there: the IOMMU must allow that too. */
        hwaddr rxlat, rlen = *len;

        if (address_space_translate(as, addr, &rxlat, &rlen, false,
                                    MEMTXATTRS_UNSPECIFIED) != mr ||
            rxlat != xlat) {
            return TARGET_NONE;
        }
        *len = MIN(rlen, *len);
    }
    if (!*len) {
        return TARGET_NONE;
    }
    if (memory_region_owner(mr) == OBJECT(s)) {
        return TARGET_SELF;
    }
    if (memory_access_is_direct(mr, is_write, MEMTXATTRS_UNSPECIFIED)) {
        return TARGET_RAM;
    }
    if (!memory_region_access_valid(mr, xlat, 1, is_write,
                                    MEMTXATTRS_UNSPECIFIED) &&
        !memory_region_access_valid(mr, xlat, 4, is_write,
                                    MEMTXATTRS_UNSPECIFIED)) {
        return TARGET_NONE;
    }
    return TARGET_MMIO;
}

/* Outcome of moving one piece. */
typedef enum {
    MOVE_OK,
    MOVE_FAILED,        /* s->result and s->limit say why */
    MOVE_LOST,          /* reset or unplugged meanwhile: touch nothing */
} DmagateMove;

static DmagateMove dmagate_fail(DmagateState *s, const char *what,
                                uint64_t addr)
{
    dmagate_guest_error(s, what, DMAGATE_ST_DMA_ERROR, addr);
    trace_dmagate_dma_error(s->index, addr);
    s->result = DMAGATE_ST_DMA_ERROR;
    s->limit = s->done;
    return MOVE_FAILED;
}

/*
 * Move up to *@len bytes at bus address @addr, transfer offset s->done.
 * On MOVE_OK, *@len is what was moved (a piece ends where the memory
 * region under it does). A piece that cannot be reached is not touched at
 * all, so bytes_done and the CRC stay exact on a DMA error.
 */
static DmagateMove dmagate_move(DmagateState *s, uint64_t addr,
                                uint32_t *len, uint32_t epoch)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    bool reads = s->opcode != DMAGATE_OP_FILL;
    bool writes = s->opcode != DMAGATE_OP_CHECKSUM;
    DMADirection dir = writes ? DMA_DIRECTION_FROM_DEVICE
                              : DMA_DIRECTION_TO_DEVICE;
    unsigned logdir = (reads ? DMALOG_READ : 0) | (writes ? DMALOG_WRITE : 0);
    dma_addr_t mapped;
    uint8_t *p;

    switch (dmagate_lookup(s, addr, len, reads, writes)) {
    case TARGET_SELF:
        dmagate_logged(s, DMALOG_DATA, addr, *len, logdir, false, s->index);
        return dmagate_fail(s, "DMA aimed at the device's own BAR", addr);
    case TARGET_NONE:
        dmagate_logged(s, DMALOG_DATA, addr, *len, logdir, false, s->index);
        return dmagate_fail(s, "DMA to or from the SG list failed", addr);
    case TARGET_RAM:
        mapped = *len;
        p = pci_dma_map(pdev, addr, &mapped, dir);
        dmagate_logged(s, DMALOG_DATA, addr, p ? mapped : *len, logdir, p,
                       s->index);
        if (!p || !mapped) {
            return dmagate_fail(s, "DMA to or from the SG list failed", addr);
        }
        *len = mapped;
        dmagate_compute(s, p, *len);
        pci_dma_unmap(pdev, p, mapped, dir, mapped);
        return MOVE_OK;
    case TARGET_MMIO:
        /*
         * One access of at most 4 bytes at a time: each may reset or
         * unplug the device, and one the target refuses ends the transfer
         * exactly there.
         */
        *len = MIN(*len, 4 - (addr & 3));
        break;
    }

    /* Device memory: accesses may have side effects, even on ourselves. */
    if (reads) {
        MemTxResult res;

        dmagate_logged(s, DMALOG_DATA, addr, *len, DMALOG_READ, true,
                       s->index);
        res = pci_dma_read(pdev, addr, s->bounce, *len);
        if (dmagate_lost(s, epoch)) {
            return MOVE_LOST;
        }
        if (res != MEMTX_OK) {
            return dmagate_fail(s, "DMA to or from the SG list failed", addr);
        }
    }
    if (!writes) {
        dmagate_compute(s, s->bounce, *len);
        return MOVE_OK;
    }
    {
        /* The CRC must not include data the write then fails to store. */
        uint32_t crc = s->crc;
        MemTxResult res;

        dmagate_compute(s, s->bounce, *len);
        dmagate_logged(s, DMALOG_DATA, addr, *len, DMALOG_WRITE, true,
                       s->index);
        res = pci_dma_write(pdev, addr, s->bounce, *len);
        if (dmagate_lost(s, epoch)) {
            return MOVE_LOST;
        }
        if (res != MEMTX_OK) {
            s->crc = crc;
            return dmagate_fail(s, "DMA to or from the SG list failed", addr);
        }
    }
    return MOVE_OK;
}

/*
 * Move up to @budget bytes of the current descriptor at the current SG
 * position. Returns the number of bytes moved, or -1 if the device was
 * lost under it; on a DMA failure ends the transfer.
 */
static int64_t dmagate_step(DmagateState *s, uint32_t budget, uint32_t epoch)
{
    uint32_t n = MIN(MIN(budget, s->sg_len[s->sg_pos] - s->sg_off),
                     s->limit - s->done);
    uint32_t moved = 0;

    while (moved < n) {
        uint64_t addr = s->sg_addr[s->sg_pos] + s->sg_off;
        uint32_t len = n - moved;

        if (!dmagate_bus_master(s)) {
            s->result = DMAGATE_ST_BUS_MASTER_OFF;
            s->limit = s->done;
            break;
        }
        if (!dmagate_in_d0(s)) {
            break;  /* put in D3hot by its own access: resumes in D0 */
        }
        switch (dmagate_move(s, addr, &len, epoch)) {
        case MOVE_LOST:
            return -1;
        case MOVE_FAILED:
            return moved;
        case MOVE_OK:
            break;
        }
        trace_dmagate_chunk(s->index, s->done, len);
        moved += len;
        s->done += len;
        s->sg_off += len;
        if (s->sg_off == s->sg_len[s->sg_pos]) {
            s->sg_pos++;
            s->sg_off = 0;
        }
    }
    return moved;
}

/* Descriptors */

/*
 * Validate the descriptor and read its SG list; a status code, 0 if fine.
 * Returns -1 if the device was lost while the list was read.
 */
static int dmagate_check_desc(DmagateState *s, const uint8_t *desc,
                              DmagateBudget *budget, uint32_t epoch)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint8_t raw[DMAGATE_SG_SIZE];
    uint64_t list = ldq_le_p(desc + DMAGATE_DESC_SG_ADDR);
    uint64_t covered = 0;

    if (s->opcode < DMAGATE_OP_FILL || s->opcode > DMAGATE_OP_TRANSFORM) {
        return dmagate_reject(s, "unknown opcode", DMAGATE_ST_BAD_OPCODE,
                              s->opcode);
    }
    if ((s->flags & ~DMAGATE_DESC_F_INTERRUPT) ||
        lduw_le_p(desc + DMAGATE_DESC_RESERVED)) {
        return dmagate_reject(s, "reserved descriptor bits set",
                              DMAGATE_ST_BAD_DESCRIPTOR, s->flags);
    }
    if (s->length == 0 || s->length > DMAGATE_MAX_XFER) {
        return dmagate_reject(s, "length out of range",
                              DMAGATE_ST_BAD_LENGTH, s->length);
    }
    if (s->sg_count == 0 || s->sg_count > DMAGATE_MAX_SEGMENTS) {
        return dmagate_reject(s, "SG count out of range", DMAGATE_ST_BAD_SG,
                              s->sg_count);
    }
    if (list % DMAGATE_SG_SIZE ||
        list > UINT64_MAX - (uint64_t)s->sg_count * DMAGATE_SG_SIZE + 1) {
        return dmagate_reject(s, "SG list misaligned or wraps",
                              DMAGATE_ST_BAD_SG, list);
    }

    for (uint32_t i = 0; i < s->sg_count && covered < s->length; i++) {
        uint64_t entry = list + (uint64_t)i * DMAGATE_SG_SIZE;
        MemTxResult res;

        dmagate_logged(s, DMALOG_SG_LIST, entry, sizeof(raw), DMALOG_READ, true,
                       s->index);
        res = pci_dma_read(pdev, entry, raw, sizeof(raw));

        if (dmagate_lost(s, epoch)) {
            return -1;
        }
        budget->sg_entries -= MIN(budget->sg_entries, 1);
        if (res != MEMTX_OK) {
            dmagate_reject(s, "cannot read SG list", DMAGATE_ST_DMA_ERROR,
                           entry);
            s->error = DMAGATE_ST_DMA_ERROR;
            s->error_addr = entry;
            return DMAGATE_ST_DMA_ERROR;
        }
        s->sg_addr[i] = ldq_le_p(raw + DMAGATE_SG_ADDR);
        s->sg_len[i] = ldl_le_p(raw + DMAGATE_SG_LEN);
        if (s->sg_len[i] == 0 || s->sg_len[i] > DMAGATE_MAX_XFER ||
            ldl_le_p(raw + DMAGATE_SG_RESERVED) ||
            s->sg_addr[i] > UINT64_MAX - s->sg_len[i] + 1) {
            dmagate_reject(s, "bad SG entry", DMAGATE_ST_BAD_SG, entry);
            s->error = DMAGATE_ST_BAD_SG;
            s->error_addr = entry;
            return DMAGATE_ST_BAD_SG;
        }
        covered += s->sg_len[i];
    }
    if (covered < s->length) {
        return dmagate_reject(s, "segments shorter than length",
                              DMAGATE_ST_BAD_SG, covered);
    }
    return DMAGATE_ST_OK;
}

static uint32_t dmagate_half(uint32_t length)
{
    uint32_t half = (length / 2) & ~4095u;

    return half ? half : length / 2;
}

/* Faults that apply to a valid descriptor as it is taken. */
static void dmagate_arm_faults(DmagateState *s)
{
    if (dmagate_fault_fires(s, DMAGATE_FAULT_STALL)) {
        /* It never completes: no other fault could have an effect. */
        s->status = FIELD_DP32(s->status, STATUS, STALLED, 1);
        return;
    }
    if (dmagate_fault_fires(s, DMAGATE_FAULT_DMA_ERROR)) {
        s->limit = dmagate_half(s->length);
        s->result = DMAGATE_ST_DMA_ERROR;
    } else if (dmagate_fault_fires(s, DMAGATE_FAULT_PARTIAL)) {
        s->limit = dmagate_half(s->length);
        s->result = DMAGATE_ST_SHORT;
    }
    if (s->opcode != DMAGATE_OP_CHECKSUM) {
        s->corrupt = dmagate_fault_fires(s, DMAGATE_FAULT_CORRUPT);
    }
    s->duplicate = dmagate_fault_fires(s, DMAGATE_FAULT_DUPLICATE_COMPLETION);
}

/*
 * Take the descriptor at SQ_HEAD: read it and its SG list, then move
 * SQ_HEAD on. False if the device halted or was lost.
 */
static bool dmagate_fetch(DmagateState *s, DmagateBudget *budget,
                          uint32_t epoch)
{
    uint8_t desc[DMAGATE_DESC_SIZE];
    uint64_t addr = s->sq_base + (uint64_t)s->sq_head * DMAGATE_DESC_SIZE;
    MemTxResult res;
    int check;

    dmagate_logged(s, DMALOG_DESCRIPTOR, addr, sizeof(desc), DMALOG_READ, true,
                   s->sq_head);
    res = pci_dma_read(PCI_DEVICE(s), addr, desc, sizeof(desc));

    if (dmagate_lost(s, epoch)) {
        return false;
    }
    if (res != MEMTX_OK) {
        dmagate_halt(s, "cannot read descriptor", DMAGATE_ST_BAD_RING,
                     s->sq_head, addr);
        return false;
    }
    budget->descriptors--;

    s->active = true;
    s->stage = STAGE_DATA;
    s->index = s->sq_head;
    s->opcode = desc[DMAGATE_DESC_OPCODE];
    s->flags = desc[DMAGATE_DESC_FLAGS];
    s->prev_tag = s->tag;
    s->has_prev_tag = s->tag_valid;
    s->tag_valid = true;
    s->tag = ldl_le_p(desc + DMAGATE_DESC_TAG);
    s->sg_count = ldl_le_p(desc + DMAGATE_DESC_SG_COUNT);
    s->length = ldl_le_p(desc + DMAGATE_DESC_LENGTH);
    s->param = ldq_le_p(desc + DMAGATE_DESC_PARAM);
    s->sg_pos = 0;
    s->sg_off = 0;
    s->done = 0;
    s->limit = 0;
    s->crc = 0;     /* crc32(0, NULL, 0) */
    s->corrupt = false;
    s->drop_irq = false;
    s->duplicate = false;
    s->delayed_irq = false;
    s->late_write = false;
    s->accepted = false;
    trace_dmagate_desc_fetch(s->index, s->opcode, s->tag, s->length,
                             s->sg_count);

    check = dmagate_check_desc(s, desc, budget, epoch);
    if (check < 0) {
        return false;
    }
    s->sq_head = (s->sq_head + 1) % s->sq_size;
    s->result = check;
    s->due_ns = dmagate_now();
    if (s->result != DMAGATE_ST_OK) {
        return true;
    }

    s->limit = s->length;
    s->accepted = true;
    dmagate_arm_faults(s);
    if (!s->zero_delay) {
        s->due_ns += s->latency_ns;
    }
    return true;
}

static bool dmagate_cq_full(DmagateState *s)
{
    return (s->cq_tail + 1) % s->cq_size == s->cq_head;
}

/* The current descriptor's completion record; the phase bit is set at post. */
static void dmagate_record(DmagateState *s, uint8_t *rec)
{
    memset(rec, 0, DMAGATE_CPL_SIZE);
    stl_le_p(rec + DMAGATE_CPL_TAG, s->cpl_tag);
    stw_le_p(rec + DMAGATE_CPL_STATUS, s->result);
    stl_le_p(rec + DMAGATE_CPL_BYTES_DONE, s->done);
    stl_le_p(rec + DMAGATE_CPL_CRC, s->crc);
    stq_le_p(rec + DMAGATE_CPL_TIMESTAMP, s->cpl_time_ns);
    stl_le_p(rec + DMAGATE_CPL_SQ_INDEX, s->index);
}

/* Write @rec at CQ_TAIL. False if the device halted or was lost. */
static bool dmagate_post(DmagateState *s, uint8_t *rec, uint32_t epoch)
{
    uint64_t addr = s->cq_base + (uint64_t)s->cq_tail * DMAGATE_CPL_SIZE;
    MemTxResult res;

    stw_le_p(rec + DMAGATE_CPL_FLAGS, s->cq_phase ? DMAGATE_CPL_F_PHASE : 0);
    dmagate_logged(s, DMALOG_COMPLETION, addr, DMAGATE_CPL_SIZE, DMALOG_WRITE,
                   true, ldl_le_p(rec + DMAGATE_CPL_SQ_INDEX));
    res = pci_dma_write(PCI_DEVICE(s), addr, rec, DMAGATE_CPL_SIZE);
    if (dmagate_lost(s, epoch)) {
        return false;
    }
    if (res != MEMTX_OK) {
        dmagate_halt(s, "cannot write completion", DMAGATE_ST_BAD_RING,
                     ldl_le_p(rec + DMAGATE_CPL_SQ_INDEX), addr);
        return false;
    }
    s->cq_tail = (s->cq_tail + 1) % s->cq_size;
    if (s->cq_tail == 0) {
        s->cq_phase ^= 1;
    }
    return true;
}

/* The interrupt causes a record of the current descriptor raises. */
static uint32_t dmagate_causes(DmagateState *s)
{
    uint32_t causes = 0;

    if (s->result != DMAGATE_ST_OK) {
        causes |= R_INT_ERROR_MASK;
    }
    if (s->flags & DMAGATE_DESC_F_INTERRUPT) {
        causes |= R_INT_COMPLETION_MASK;
    }
    return causes;
}

/* Its records are written: the delayed interrupt, then the late write. */
static void dmagate_after_records(DmagateState *s)
{
    if (s->stage < STAGE_IRQ && s->delayed_irq) {
        s->stage = STAGE_IRQ;
        s->due_ns = s->cpl_time_ns + s->irq_delay_ns;
    } else if (s->stage < STAGE_LATE && s->late_write) {
        s->stage = STAGE_LATE;
        s->due_ns = s->cpl_time_ns + s->late_delay_ns;
    } else {
        s->active = false;
    }
}

/*
 * Faults decided as the first record is written. The order is that of
 * docs/device.md: the rules of a later fault see only descriptors the
 * earlier ones left it.
 */
static void dmagate_arm_completion_faults(DmagateState *s, uint32_t causes)
{
    if (!s->accepted) {
        return;
    }
    if (s->has_prev_tag && s->prev_tag != s->tag &&
        dmagate_fault_fires(s, DMAGATE_FAULT_WRONG_TAG)) {
        s->cpl_tag = s->prev_tag;
    }
    s->drop_irq = causes && dmagate_fault_fires(s, DMAGATE_FAULT_DROP_IRQ);
    s->delayed_irq = causes && !s->drop_irq &&
                     dmagate_fault_fires(s, DMAGATE_FAULT_DELAYED_IRQ);
    s->late_write = s->done && s->opcode != DMAGATE_OP_CHECKSUM &&
                    dmagate_fault_fires(s, DMAGATE_FAULT_LATE_WRITE);
}

/*
 * out-of-order: keep this record back and write it after the next
 * descriptor's first one. Only for a descriptor with a successor already
 * in the SQ and no other record or write still to come.
 */
static bool dmagate_hold_record(DmagateState *s, const uint8_t *rec,
                                uint32_t causes)
{
    if (!s->accepted || s->duplicate || s->delayed_irq || s->late_write ||
        s->held != HELD_NONE || s->sq_head == s->sq_tail ||
        !dmagate_fault_fires(s, DMAGATE_FAULT_OUT_OF_ORDER)) {
        return false;
    }
    memcpy(s->held_rec, rec, DMAGATE_CPL_SIZE);
    s->held_causes = s->drop_irq ? 0 : causes;
    s->held = HELD_WAITING;
    s->active = false;
    trace_dmagate_record_held(s->index, s->tag);
    return true;
}

/*
 * Write the current descriptor's completion, or its duplicate. False if
 * the engine must stop: CQ full (it waits for CQ_HEAD), halted or lost.
 */
static bool dmagate_complete(DmagateState *s, uint32_t epoch)
{
    bool first = s->stage == STAGE_COMPLETE;
    uint8_t rec[DMAGATE_CPL_SIZE];
    uint32_t causes = dmagate_causes(s);

    if (dmagate_cq_full(s)) {
        trace_dmagate_cq_full(s->cq_head, s->cq_tail);
        return false;
    }
    if (first) {
        if (s->result == DMAGATE_ST_OK && s->done < s->length) {
            s->result = DMAGATE_ST_SHORT;
            causes = dmagate_causes(s);
        }
        s->cpl_time_ns = dmagate_now();
        s->cpl_tag = s->tag;
        trace_dmagate_complete(s->index, s->tag, s->result, s->done, s->crc);
        s->stats[STAT_DESCRIPTORS]++;
        s->stats[STAT_BYTES] += s->done;
        if (s->result != DMAGATE_ST_OK) {
            s->stats[STAT_ERRORS]++;
            s->error = s->result;
            s->error_index = s->index;
        }
        dmagate_arm_completion_faults(s, causes);
    }
    dmagate_record(s, rec);
    if (first && dmagate_hold_record(s, rec, causes)) {
        return true;
    }
    if (!dmagate_post(s, rec, epoch)) {
        return false;
    }
    if (first && s->held == HELD_WAITING) {
        s->held = HELD_RELEASE;
    }
    if (first && s->duplicate) {
        s->stage = STAGE_DUPLICATE;
    } else {
        dmagate_after_records(s);
    }
    if (causes && !s->drop_irq && !s->delayed_irq) {
        return dmagate_raise(s, causes);
    }
    return true;
}

/* Write the record out-of-order held back, now that another one is out. */
static bool dmagate_release_held(DmagateState *s, uint32_t epoch)
{
    if (dmagate_cq_full(s)) {
        trace_dmagate_cq_full(s->cq_head, s->cq_tail);
        return false;
    }
    if (!dmagate_post(s, s->held_rec, epoch)) {
        return false;
    }
    s->held = HELD_NONE;
    return !s->held_causes || dmagate_raise(s, s->held_causes);
}

/*
 * stray-write: as the data of a FILL or TRANSFORM is all done, 64 more
 * bytes of it go to the start of the page past its last segment, when
 * that is guest RAM (written in place: no call out of the device).
 */
static void dmagate_stray_write(DmagateState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint32_t seg, len = DMAGATE_STRAY_BYTES;
    dma_addr_t mapped = len;
    uint64_t end, addr;
    uint8_t *p;

    if (!s->accepted || s->result != DMAGATE_ST_OK ||
        s->opcode == DMAGATE_OP_CHECKSUM || !s->done ||
        s->done != s->length) {
        return;
    }
    /* The segment that holds the transfer's last byte. */
    seg = s->sg_off ? s->sg_pos : s->sg_pos - 1;
    if (seg >= MIN(s->sg_count, DMAGATE_MAX_SEGMENTS)) {
        return;     /* a position no walk leaves (from a stream) */
    }
    end = s->sg_addr[seg] + s->sg_len[seg];
    addr = ROUND_UP(end, DMAGATE_PAGE);
    if (end == 0 || addr < end ||
        dmagate_lookup(s, addr, &len, s->opcode == DMAGATE_OP_TRANSFORM,
                       true) != TARGET_RAM || len < DMAGATE_STRAY_BYTES ||
        !dmagate_fault_fires(s, DMAGATE_FAULT_STRAY_WRITE)) {
        return;
    }
    p = pci_dma_map(pdev, addr, &mapped, DMA_DIRECTION_FROM_DEVICE);
    dmagate_logged(s, DMALOG_DATA, addr, mapped, DMALOG_WRITE |
                   (s->opcode == DMAGATE_OP_TRANSFORM ? DMALOG_READ : 0), p,
                   s->index);
    if (!p) {
        return;
    }
    if (s->opcode == DMAGATE_OP_FILL) {
        dmagate_pattern(p, s->length, mapped, s->param);
    } else {
        dmagate_xor_key(p, s->length, mapped, s->param);
    }
    pci_dma_unmap(pdev, p, mapped, DMA_DIRECTION_FROM_DEVICE, mapped);
    trace_dmagate_stray_write(s->index, addr, mapped);
}

static int64_t dmagate_transfer_ns(DmagateState *s, uint32_t bytes)
{
    if (s->zero_delay || !s->bandwidth_mbps) {
        return 0;
    }
    /* 1 MB/s moves one byte per microsecond. */
    return muldiv64(bytes, 1000, s->bandwidth_mbps);
}

/* The engine may take or move work now. */
static bool dmagate_may_run(DmagateState *s)
{
    return !s->unrealized && !s->dead && runstate_is_running() &&
           dmagate_enabled(s) &&
           !FIELD_EX32(s->status, STATUS, HALTED) &&
           !FIELD_EX32(s->status, STATUS, STALLED) && dmagate_in_d0(s);
}

/*
 * One run of the engine: take descriptors in order, move their data in
 * timed chunks, post completions. It stops when it must wait for time
 * (the timer re-schedules it), for the driver (doorbell or CQ_HEAD),
 * when its budget is spent (it re-schedules itself), or when the device
 * was reset, disabled or unplugged by one of its own accesses.
 */
static void dmagate_engine(DmagateState *s)
{
    DmagateBudget budget = {
        .bytes = DMAGATE_BH_BYTES,
        .descriptors = DMAGATE_BH_DESCRIPTORS,
        .sg_entries = DMAGATE_BH_SG_ENTRIES,
    };
    uint32_t epoch = s->epoch;

    if (!s->unrealized && dmagate_in_d0(s) &&
        s->int_status & s->int_unsignalled & ~s->int_mask) {
        /* Raised in D3hot, held until now. */
        if (!dmagate_signal(s, s->int_status & s->int_unsignalled)) {
            return;
        }
        dmagate_update_intx(s);
    }
    while (dmagate_may_run(s)) {
        if (s->held == HELD_RELEASE) {
            if (!dmagate_release_held(s, epoch)) {
                return;
            }
            continue;
        }
        if (!s->active) {
            if (s->sq_head == s->sq_tail) {
                return;
            }
            if (!budget.descriptors || !budget.sg_entries) {
                qemu_bh_schedule(s->bh);
                return;
            }
            if (!dmagate_bus_master(s)) {
                dmagate_guest_error(s, "doorbell with bus mastering off",
                                    DMAGATE_ST_BUS_MASTER_OFF, 0);
                dmagate_raise(s, R_INT_ERROR_MASK);
                return;
            }
            if (!dmagate_fetch(s, &budget, epoch)) {
                return;
            }
            continue;
        }
        /* Only moving data is instant in zero-delay mode; fault delays hold. */
        if ((!s->zero_delay || (s->stage != STAGE_DATA &&
                                s->stage != STAGE_LATE_WRITE)) &&
            dmagate_now() < s->due_ns) {
            timer_mod(s->timer, s->due_ns);
            return;
        }
        if ((s->stage == STAGE_DATA || s->stage == STAGE_LATE_WRITE) &&
            s->done < s->limit) {
            int64_t moved;

            if (!budget.bytes) {
                qemu_bh_schedule(s->bh);
                return;
            }
            moved = dmagate_step(s, MIN(budget.bytes, DMAGATE_CHUNK), epoch);
            if (moved < 0) {
                return;
            }
            budget.bytes -= moved;
            s->due_ns += dmagate_transfer_ns(s, moved);
            continue;
        }
        if (s->stage == STAGE_DATA) {
            dmagate_stray_write(s);
            s->stage = STAGE_COMPLETE;
            if (s->zero_delay) {
                s->due_ns = dmagate_now();
            }
            s->due_ns += s->extra_delay_ns;
            continue;
        }
        if (s->stage == STAGE_IRQ) {
            dmagate_after_records(s);
            trace_dmagate_irq_delayed(s->index);
            if (!dmagate_raise(s, dmagate_causes(s))) {
                return;
            }
            continue;
        }
        if (s->stage == STAGE_LATE) {
            /* The same data pass again, over what the first one reached. */
            trace_dmagate_late_write(s->index, s->done);
            s->stage = STAGE_LATE_WRITE;
            s->limit = s->done;
            s->done = 0;
            s->sg_pos = 0;
            s->sg_off = 0;
            s->due_ns = dmagate_now();
            continue;
        }
        if (s->stage == STAGE_LATE_WRITE) {
            s->active = false;
            continue;
        }
        if (!dmagate_complete(s, epoch)) {
            return;
        }
    }
}

static void dmagate_drop_ref(void *opaque)
{
    object_unref(OBJECT(opaque));
}

static void dmagate_run(void *opaque)
{
    DmagateState *s = opaque;

    object_ref(OBJECT(s));
    dmagate_engine(s);
    if (s->unrealized) {
        /*
         * Unplugged under the engine: the last reference may go with
         * ours, and this guarded bottom half still writes the guard in
         * the device when it returns.
         */
        aio_bh_schedule_oneshot(qemu_get_aio_context(), dmagate_drop_ref, s);
    } else {
        object_unref(OBJECT(s));
    }
}

static void dmagate_timer_cb(void *opaque)
{
    DmagateState *s = opaque;

    qemu_bh_schedule(s->bh);
}

static void dmagate_vm_state_change(void *opaque, bool running,
                                    RunState state)
{
    DmagateState *s = opaque;

    if (running) {
        qemu_bh_schedule(s->bh);
    }
}

/* fault-irq-storm-ns */

static bool dmagate_storm_on(DmagateState *s)
{
    return s->storm_ns && dmagate_enabled(s) && !s->dead && !s->unrealized;
}

/* Start or stop the storm as its property and the device's state say. */
static void dmagate_storm_update(DmagateState *s)
{
    if (!s->storm_timer) {
        return;     /* set on -device: starts when the driver enables */
    }
    if (!dmagate_storm_on(s)) {
        timer_del(s->storm_timer);
        s->storm_announced = false;
        return;
    }
    if (!s->storm_announced) {
        s->storm_announced = true;
        dmagate_fired(s, DMAGATE_FAULT_IRQ_STORM, false, -1);
    }
    if (!timer_pending(s->storm_timer)) {
        timer_mod(s->storm_timer, dmagate_now() + s->storm_ns);
    }
}

/* One interrupt of the storm: COMPLETION, with no completion behind it. */
static void dmagate_storm_cb(void *opaque)
{
    DmagateState *s = opaque;

    if (!dmagate_storm_on(s)) {
        return;
    }
    /* Re-armed first: the message may reset or unplug the device. */
    timer_mod(s->storm_timer, dmagate_now() + s->storm_ns);
    s->stats[STAT_FAULTS]++;
    s->int_status |= R_INT_COMPLETION_MASK;
    object_ref(OBJECT(s));
    if (dmagate_signal(s, R_INT_COMPLETION_MASK)) {
        dmagate_update_intx(s);
    }
    aio_bh_schedule_oneshot(qemu_get_aio_context(), dmagate_drop_ref, s);
}

/* Reset */

static void dmagate_reset_state(DmagateState *s, const char *why)
{
    trace_dmagate_reset(why);
    s->epoch++;
    timer_del(s->timer);
    qemu_bh_cancel(s->bh);
    s->ctrl = 0;
    s->status = 0;
    s->error = 0;
    s->error_index = 0;
    s->error_addr = 0;
    s->sq_base = 0;
    s->sq_size = 0;
    s->sq_head = 0;
    s->sq_tail = 0;
    s->cq_base = 0;
    s->cq_size = 0;
    s->cq_head = 0;
    s->cq_tail = 0;
    s->cq_phase = 1;
    s->int_status = 0;
    s->int_mask = 0;
    s->int_unsignalled = 0;
    s->time_hi = 0;
    memset(s->stats, 0, sizeof(s->stats));
    s->active = false;
    s->stage = STAGE_DATA;
    s->tag_valid = false;
    s->held = HELD_NONE;
    dmagate_storm_update(s);
    dmagate_update_intx(s);
}

static void dmagate_reset_hold(Object *obj, ResetType type)
{
    DmagateState *s = DMAGATE(obj);

    if (s->unrealized) {
        /* Unrealized but still on the reset tree: no PCI state to touch. */
        s->epoch++;
        return;
    }
    dmagate_reset_state(s, "device");
}

/* Registers */

static bool dmagate_ring_ok(uint64_t base, uint32_t size, uint32_t entry)
{
    return size >= DMAGATE_MIN_RING_SIZE && size <= DMAGATE_MAX_RING_SIZE &&
           is_power_of_2(size) && base % DMAGATE_RING_ALIGN == 0 &&
           base <= UINT64_MAX - (uint64_t)size * entry + 1;
}

/* fault-spurious-irq: @count COMPLETION messages with no new completion. */
static void dmagate_fire_spurious(DmagateState *s, uint32_t count)
{
    uint32_t epoch = s->epoch;

    if (!count) {
        return;
    }
    /* One event for the batch; each interrupt counts as a fault. */
    dmagate_fired(s, DMAGATE_FAULT_SPURIOUS_IRQ, false, -1);
    s->stats[STAT_FAULTS] += count - 1;
    for (uint32_t i = 0; i < count; i++) {
        s->int_status |= R_INT_COMPLETION_MASK;
        if (!dmagate_signal(s, R_INT_COMPLETION_MASK)) {
            return;
        }
    }
    if (!dmagate_lost(s, epoch)) {
        dmagate_update_intx(s);
    }
}

static void dmagate_enable(DmagateState *s)
{
    uint32_t held = s->faults[DMAGATE_FAULT_SPURIOUS_IRQ];

    if (!dmagate_ring_ok(s->sq_base, s->sq_size, DMAGATE_DESC_SIZE)) {
        dmagate_halt(s, "bad submission ring", DMAGATE_ST_BAD_RING,
                     0, s->sq_base);
        return;
    }
    if (!dmagate_ring_ok(s->cq_base, s->cq_size, DMAGATE_CPL_SIZE)) {
        dmagate_halt(s, "bad completion ring", DMAGATE_ST_BAD_RING,
                     0, s->cq_base);
        return;
    }
    s->sq_head = s->sq_tail = 0;
    s->cq_head = s->cq_tail = 0;
    s->cq_phase = 1;
    s->tag_valid = false;
    s->held = HELD_NONE;
    s->status = FIELD_DP32(s->status, STATUS, ENABLED, 1);
    trace_dmagate_enable(s->sq_base, s->sq_size, s->cq_base, s->cq_size);
    dmagate_storm_update(s);
    /* Spurious interrupts set while disabled were held for this moment. */
    s->faults[DMAGATE_FAULT_SPURIOUS_IRQ] = 0;
    dmagate_fire_spurious(s, held);
}

static void dmagate_disable(DmagateState *s)
{
    /* Abandons a descriptor in flight; rings stay set up, a stall stays. */
    s->epoch++;
    s->ctrl = 0;
    s->active = false;
    s->stage = STAGE_DATA;
    s->held = HELD_NONE;
    timer_del(s->timer);
    s->status = FIELD_DP32(s->status, STATUS, ENABLED, 0);
    dmagate_storm_update(s);
}

static void dmagate_write_ctrl(DmagateState *s, uint32_t val)
{
    if (FIELD_EX32(val, CTRL, RESET)) {
        if (s->ignore_reset & DMAGATE_IGNORE_SOFT) {
            trace_dmagate_reset_ignored("soft");
            dmagate_fired(s, DMAGATE_FAULT_IGNORE_RESET, false, -1);
            return;
        }
        dmagate_reset_state(s, "soft");
        return;
    }
    if (val & ~R_CTRL_ENABLE_MASK) {
        dmagate_guest_error(s, "reserved CTRL bits set",
                            DMAGATE_ST_BAD_ACCESS, A_CTRL);
    }
    if (FIELD_EX32(val, CTRL, ENABLE) && !FIELD_EX32(s->ctrl, CTRL, ENABLE)) {
        s->ctrl = R_CTRL_ENABLE_MASK;
        if (!FIELD_EX32(s->status, STATUS, HALTED)) {
            dmagate_enable(s);
        }
    } else if (!FIELD_EX32(val, CTRL, ENABLE) &&
               FIELD_EX32(s->ctrl, CTRL, ENABLE)) {
        dmagate_disable(s);
    }
}

static bool dmagate_ring_reg_writable(DmagateState *s, hwaddr addr)
{
    if (FIELD_EX32(s->ctrl, CTRL, ENABLE)) {
        dmagate_guest_error(s, "ring register written while enabled",
                            DMAGATE_ST_REG_LOCKED, addr);
        return false;
    }
    return true;
}

static void dmagate_write_index(DmagateState *s, uint32_t *reg,
                                uint32_t size, uint32_t val, hwaddr addr)
{
    if (!size || val >= size) {
        dmagate_guest_error(s, "ring index out of range",
                            DMAGATE_ST_BAD_INDEX, addr);
        return;
    }
    *reg = val;
    qemu_bh_schedule(s->bh);
}

static void dmagate_write_int_mask(DmagateState *s, uint32_t val)
{
    if (val & ~DMAGATE_INT_ALL) {
        dmagate_guest_error(s, "reserved INT_MASK bits set",
                            DMAGATE_ST_BAD_ACCESS, A_INT_MASK);
    }
    s->int_mask = val & DMAGATE_INT_ALL;
    /* Causes latched while masked signal now; delivered ones do not. */
    if (dmagate_signal(s, s->int_status & s->int_unsignalled)) {
        dmagate_update_intx(s);
    }
}

static void dmagate_write_int_ack(DmagateState *s, uint32_t val)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    s->int_status &= ~val;
    s->int_unsignalled &= ~val;
    /* A message held by a masked vector is for a cause now handled. */
    if (val & R_INT_COMPLETION_MASK) {
        msix_clr_pending(pdev, DMAGATE_MSIX_VEC_COMPLETION);
    }
    if (val & R_INT_ERROR_MASK) {
        msix_clr_pending(pdev, DMAGATE_MSIX_VEC_ERROR);
    }
    dmagate_update_intx(s);
}

static uint64_t dmagate_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    DmagateState *s = opaque;
    uint64_t now;
    uint32_t val = 0;

    if (s->dead) {
        trace_dmagate_dead_access(addr, "read");
        return MAKE_64BIT_MASK(0, size * 8);
    }
    if (size != 4 || addr % 4) {
        qemu_log_mask(LOG_GUEST_ERROR, "%s: %u-byte read at 0x%" HWADDR_PRIx
                      " refused: registers take aligned 32-bit accesses\n",
                      TYPE_DMAGATE, size, addr);
        return MAKE_64BIT_MASK(0, size * 8);
    }

    switch (addr) {
    case A_ID:
        val = DMAGATE_ID_VALUE;
        break;
    case A_VERSION:
        val = DMAGATE_VERSION_VALUE;
        break;
    case A_CAPS:
        val = DMAGATE_MAX_SEGMENTS | DMAGATE_MAX_RING_ORDER << 16 |
              DMAGATE_CAPS_OP_FILL | DMAGATE_CAPS_OP_CHECKSUM |
              DMAGATE_CAPS_OP_TRANSFORM;
        break;
    case A_MAX_XFER:
        val = DMAGATE_MAX_XFER;
        break;
    case A_CTRL:
        val = s->ctrl;
        break;
    case A_STATUS:
        val = FIELD_DP32(s->status, STATUS, BUSY, s->active);
        break;
    case A_ERROR:
        val = s->error;
        break;
    case A_ERROR_INDEX:
        val = s->error_index;
        break;
    case A_ERROR_ADDR_LO:
        val = s->error_addr;
        break;
    case A_ERROR_ADDR_HI:
        val = s->error_addr >> 32;
        break;
    case A_SQ_BASE_LO:
        val = s->sq_base;
        break;
    case A_SQ_BASE_HI:
        val = s->sq_base >> 32;
        break;
    case A_SQ_SIZE:
        val = s->sq_size;
        break;
    case A_SQ_TAIL:
        val = s->sq_tail;
        break;
    case A_SQ_HEAD:
        val = s->sq_head;
        break;
    case A_CQ_BASE_LO:
        val = s->cq_base;
        break;
    case A_CQ_BASE_HI:
        val = s->cq_base >> 32;
        break;
    case A_CQ_SIZE:
        val = s->cq_size;
        break;
    case A_CQ_HEAD:
        val = s->cq_head;
        break;
    case A_CQ_TAIL:
        val = s->cq_tail;
        break;
    case A_INT_STATUS:
        val = s->int_status;
        break;
    case A_INT_MASK:
        val = s->int_mask;
        break;
    case A_TIME_LO:
        now = dmagate_now();
        s->time_hi = now >> 32;
        val = now;
        break;
    case A_TIME_HI:
        val = s->time_hi;
        break;
    case DMAGATE_REG_STAT_DESCRIPTORS ...
         DMAGATE_REG_STAT_DESCRIPTORS + STAT_COUNT * 8 - 4: {
        uint64_t stat = s->stats[(addr - DMAGATE_REG_STAT_DESCRIPTORS) / 8];

        val = addr % 8 ? stat >> 32 : stat;
        break;
    }
    default:
        qemu_log_mask(LOG_GUEST_ERROR, "%s: read of undefined register 0x%"
                      HWADDR_PRIx "\n", TYPE_DMAGATE, addr);
        break;
    }
    trace_dmagate_mmio_read(addr, val);
    return val;
}

static void dmagate_mmio_write(void *opaque, hwaddr addr, uint64_t data,
                               unsigned size)
{
    DmagateState *s = opaque;
    uint32_t val = data;

    if (s->dead) {
        trace_dmagate_dead_access(addr, "write");
        return;
    }
    if (size != 4 || addr % 4) {
        g_autofree char *what = g_strdup_printf(
            "%u-byte write dropped: registers take aligned 32-bit accesses",
            size);

        dmagate_guest_error(s, what, DMAGATE_ST_BAD_ACCESS, addr);
        return;
    }

    trace_dmagate_mmio_write(addr, val);
    switch (addr) {
    case A_CTRL:
        dmagate_write_ctrl(s, val);
        break;
    case A_SQ_BASE_LO:
        if (dmagate_ring_reg_writable(s, addr)) {
            s->sq_base = deposit64(s->sq_base, 0, 32, val);
        }
        break;
    case A_SQ_BASE_HI:
        if (dmagate_ring_reg_writable(s, addr)) {
            s->sq_base = deposit64(s->sq_base, 32, 32, val);
        }
        break;
    case A_SQ_SIZE:
        if (dmagate_ring_reg_writable(s, addr)) {
            s->sq_size = val;
        }
        break;
    case A_CQ_BASE_LO:
        if (dmagate_ring_reg_writable(s, addr)) {
            s->cq_base = deposit64(s->cq_base, 0, 32, val);
        }
        break;
    case A_CQ_BASE_HI:
        if (dmagate_ring_reg_writable(s, addr)) {
            s->cq_base = deposit64(s->cq_base, 32, 32, val);
        }
        break;
    case A_CQ_SIZE:
        if (dmagate_ring_reg_writable(s, addr)) {
            s->cq_size = val;
        }
        break;
    case A_SQ_TAIL:
        dmagate_write_index(s, &s->sq_tail, dmagate_enabled(s) ? s->sq_size
                            : 0, val, addr);
        break;
    case A_CQ_HEAD:
        dmagate_write_index(s, &s->cq_head, dmagate_enabled(s) ? s->cq_size
                            : 0, val, addr);
        break;
    case A_INT_MASK:
        dmagate_write_int_mask(s, val);
        break;
    case A_INT_ACK:
        dmagate_write_int_ack(s, val);
        break;
    default:
        qemu_log_mask(LOG_GUEST_ERROR, "%s: write of 0x%" PRIx32
                      " to read-only or undefined register 0x%"
                      HWADDR_PRIx "\n", TYPE_DMAGATE, val, addr);
        break;
    }
}

/*
 * Every size reaches the handlers as the guest made it, so that a narrow,
 * wide or misaligned access gets the datasheet's answer under any
 * accelerator instead of being split or refused by the memory core.
 */
static const MemoryRegionOps dmagate_mmio_ops = {
    .read = dmagate_mmio_read,
    .write = dmagate_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = {
        .min_access_size = 1,
        .max_access_size = 8,
        .unaligned = true,
    },
    .impl = {
        .min_access_size = 1,
        .max_access_size = 8,
        .unaligned = true,
    },
};

/* PCI */

/* A dead device answers config reads with all ones, as an empty slot. */
static uint32_t dmagate_read_config(PCIDevice *pdev, uint32_t addr, int len)
{
    DmagateState *s = DMAGATE(pdev);

    if (s->dead) {
        trace_dmagate_dead_access(addr, "config read");
        return MAKE_64BIT_MASK(0, len * 8);
    }
    return pci_default_read_config(pdev, addr, len);
}

static void dmagate_write_config(PCIDevice *pdev, uint32_t addr, uint32_t val,
                                 int len)
{
    DmagateState *s = DMAGATE(pdev);
    uint8_t *devctl = pdev->config + pdev->exp.exp_cap + PCI_EXP_DEVCTL;
    bool was_d0 = dmagate_in_d0(s);

    if (s->dead) {
        trace_dmagate_dead_access(addr, "config write");
        return;
    }
    pci_default_write_config(pdev, addr, val, len);
    if (pci_get_word(devctl) & PCI_EXP_DEVCTL_BCR_FLR &&
        s->ignore_reset & DMAGATE_IGNORE_FLR) {
        /* Config space, engine and all: nothing is reset. */
        pci_word_test_and_clear_mask(devctl, PCI_EXP_DEVCTL_BCR_FLR);
        trace_dmagate_reset_ignored("FLR");
        dmagate_fired(s, DMAGATE_FAULT_IGNORE_RESET, false, -1);
    }
    pcie_cap_flr_write_config(pdev, addr, val, len);
    /* Enabling MSI or MSI-X hands the interrupt over from INTx. */
    dmagate_update_intx(s);
    if (!was_d0 && dmagate_in_d0(s)) {
        trace_dmagate_power("D0");
        qemu_bh_schedule(s->bh);
    } else if (was_d0 && !dmagate_in_d0(s)) {
        trace_dmagate_power("D3hot");
    }
}

static void dmagate_realize(PCIDevice *pdev, Error **errp)
{
    DmagateState *s = DMAGATE(pdev);
    int pm;

    pci_config_set_interrupt_pin(pdev->config, 1);
    memory_region_init_io(&s->mmio, OBJECT(s), &dmagate_mmio_ops, s,
                          "dmagate-regs", DMAGATE_REGS_SIZE);
    pci_register_bar(pdev, DMAGATE_REGS_BAR, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->mmio);

    pm = pci_pm_init(pdev, DMAGATE_PM_CAP_OFFSET, errp);
    if (pm < 0) {
        return;
    }
    pci_set_word(pdev->config + pm + PCI_PM_PMC, PCI_PM_CAP_VER_1_2);
    pci_set_word(pdev->config + pm + PCI_PM_CTRL, PCI_PM_CTRL_NO_SOFT_RESET);
    pci_set_word(pdev->wmask + pm + PCI_PM_CTRL, PCI_PM_CTRL_STATE_MASK);

    if (pcie_endpoint_cap_init(pdev, 0x80) < 0) {
        error_setg(errp, "dmagate: cannot add the PCIe capability");
        return;
    }
    pcie_cap_flr_init(pdev);
    if (msi_init(pdev, 0x60, 1, true, false, errp) < 0) {
        goto err_pcie;
    }
    if (msix_init_exclusive_bar(pdev, DMAGATE_MSIX_VECTORS, DMAGATE_MSIX_BAR,
                                errp) < 0) {
        goto err_msi;
    }
    for (int v = 0; v < DMAGATE_MSIX_VECTORS; v++) {
        msix_vector_use(pdev, v);
    }

    /* A device realized again keeps what its first realize made. */
    if (!s->bh) {
        s->bounce = g_malloc(DMAGATE_CHUNK);
        s->bh = qemu_bh_new_guarded(dmagate_run, s,
                                    &DEVICE(pdev)->mem_reentrancy_guard);
        s->timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, dmagate_timer_cb, s);
        s->storm_timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, dmagate_storm_cb,
                                      s);
        dmagate_dmalog_init(&s->dmalog);
    }
    s->unrealized = false;
    s->vm_state = qemu_add_vm_change_state_handler(dmagate_vm_state_change, s);
    s->cq_phase = 1;
    return;

err_msi:
    msi_uninit(pdev);
err_pcie:
    pcie_cap_exit(pdev);
}

static void dmagate_exit(PCIDevice *pdev)
{
    DmagateState *s = DMAGATE(pdev);

    /* The engine may be on the stack (it unplugged itself): see the top. */
    s->unrealized = true;
    s->epoch++;
    timer_del(s->timer);
    timer_del(s->storm_timer);
    qemu_bh_cancel(s->bh);
    qemu_del_vm_change_state_handler(s->vm_state);
    s->vm_state = NULL;
    msix_unuse_all_vectors(pdev);
    msix_uninit_exclusive_bar(pdev);
    msi_uninit(pdev);
    pcie_cap_exit(pdev);
    pci_set_irq(pdev, 0);
}

static void dmagate_instance_finalize(Object *obj)
{
    DmagateState *s = DMAGATE(obj);

    if (s->timer) {
        timer_free(s->timer);
    }
    if (s->storm_timer) {
        timer_free(s->storm_timer);
    }
    if (s->bh) {
        qemu_bh_delete(s->bh);
    }
    g_free(s->bounce);
    dmagate_dmalog_free(&s->dmalog);
}

/* QOM properties: configuration and fault knobs, settable at runtime. */

typedef struct DmagateU64Prop {
    const char *name;
    const char *description;
    size_t offset;
    uint64_t max;
    uint64_t min_nonzero;   /* a value other than 0 is at least this */
} DmagateU64Prop;

static const DmagateU64Prop dmagate_u64_props[] = {
    { "latency-ns", "start latency of each descriptor (ns)",
      offsetof(DmagateState, latency_ns), DMAGATE_MAX_DELAY_NS },
    { "bandwidth-mbps", "transfer rate in MB/s (0: unlimited)",
      offsetof(DmagateState, bandwidth_mbps), DMAGATE_MAX_BANDWIDTH_MBPS },
    { "fault-extra-delay-ns", "extra time before every completion (ns)",
      offsetof(DmagateState, extra_delay_ns), DMAGATE_MAX_DELAY_NS },
    { "fault-late-write-delay-ns", "late-write: time from completion (ns)",
      offsetof(DmagateState, late_delay_ns), DMAGATE_MAX_DELAY_NS },
    { "fault-irq-delay-ns", "delayed-irq: time from completion (ns)",
      offsetof(DmagateState, irq_delay_ns), DMAGATE_MAX_DELAY_NS },
    { "fault-irq-storm-ns", "interrupt storm: gap between interrupts "
      "(ns; 0: no storm)", offsetof(DmagateState, storm_ns),
      DMAGATE_MAX_DELAY_NS, DMAGATE_MIN_STORM_NS },
};

static const char *dmagate_u64_range_error(const DmagateU64Prop *prop,
                                           uint64_t value)
{
    if (value > prop->max) {
        return "is above the maximum";
    }
    if (value && value < prop->min_nonzero) {
        return "is below the minimum";
    }
    return NULL;
}

static void dmagate_get_u32(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    uint32_t *field = (uint32_t *)((char *)obj + (uintptr_t)opaque);

    visit_type_uint32(v, name, field, errp);
}

static void dmagate_set_u32(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    uint32_t *field = (uint32_t *)((char *)obj + (uintptr_t)opaque);

    visit_type_uint32(v, name, field, errp);
}

static void dmagate_get_stat(Object *obj, Visitor *v, const char *name,
                             void *opaque, Error **errp)
{
    uint64_t *field = (uint64_t *)((char *)obj + (uintptr_t)opaque);

    visit_type_uint64(v, name, field, errp);
}

static void dmagate_get_u64(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    const DmagateU64Prop *prop = opaque;
    uint64_t *field = (uint64_t *)((char *)obj + prop->offset);

    visit_type_uint64(v, name, field, errp);
}

static void dmagate_set_u64(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    DmagateState *s = DMAGATE(obj);
    const DmagateU64Prop *prop = opaque;
    uint64_t value;

    if (!visit_type_uint64(v, name, &value, errp)) {
        return;
    }
    if (dmagate_u64_range_error(prop, value)) {
        error_setg(errp, "%s: %" PRIu64 " is out of range (0, or %" PRIu64
                   " to %" PRIu64 ")", name, value, MAX(prop->min_nonzero, 1),
                   prop->max);
        return;
    }
    *(uint64_t *)((char *)obj + prop->offset) = value;
    if (s->bh) {
        /* A changed timing applies to what is still to come. */
        qemu_bh_schedule(s->bh);
    }
    if (prop->offset == offsetof(DmagateState, storm_ns) &&
        DEVICE(obj)->realized) {
        timer_del(s->storm_timer);   /* the new gap starts from now */
        dmagate_storm_update(s);
    }
}

static void dmagate_set_spurious(Object *obj, Visitor *v, const char *name,
                                 void *opaque, Error **errp)
{
    DmagateState *s = DMAGATE(obj);
    uint32_t count;

    if (!visit_type_uint32(v, name, &count, errp)) {
        return;
    }
    if (count > DMAGATE_MAX_SPURIOUS) {
        error_setg(errp, "%s: %" PRIu32 " is out of range (at most %u "
                   "interrupts at a time)", name, count, DMAGATE_MAX_SPURIOUS);
        return;
    }
    if (!DEVICE(obj)->realized || !dmagate_enabled(s)) {
        /* Held until the driver enables the device. */
        s->faults[DMAGATE_FAULT_SPURIOUS_IRQ] = count;
        return;
    }
    object_ref(obj);
    dmagate_fire_spurious(s, count);
    /* A message may have unplugged the device: drop the last ref later. */
    aio_bh_schedule_oneshot(qemu_get_aio_context(), dmagate_drop_ref, s);
}

static char *dmagate_get_rules(Object *obj, Error **errp)
{
    return dmagate_rules_format(&DMAGATE(obj)->rules);
}

static void dmagate_set_rules(Object *obj, const char *value, Error **errp)
{
    /* A new set starts its counts afresh; a bad one leaves the old set. */
    dmagate_rules_parse(value, &DMAGATE(obj)->rules, errp);
}

/* fault-rule-status: [{rule, fault, matched, fired}, ...] */
static void dmagate_get_rule_status(Object *obj, Visitor *v, const char *name,
                                    void *opaque, Error **errp)
{
    DmagateRuleSet *set = &DMAGATE(obj)->rules;

    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return;
    }
    for (uint32_t i = 0; i < set->count; i++) {
        DmagateRule *rule = &set->rule[i];
        g_autofree char *text = dmagate_rule_format(rule);
        char *fault = (char *)dmagate_fault_name(rule->fault);
        bool ok;

        if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
            break;
        }
        ok = visit_type_str(v, "rule", &text, errp) &&
             visit_type_str(v, "fault", &fault, errp) &&
             visit_type_uint64(v, "matched", &rule->matched, errp) &&
             visit_type_uint64(v, "fired", &rule->fired, errp) &&
             visit_check_struct(v, errp);
        visit_end_struct(v, NULL);
        if (!ok) {
            break;
        }
    }
    visit_end_list(v, NULL);
}

static char *dmagate_get_ignore_reset(Object *obj, Error **errp)
{
    return g_strdup(ignore_reset_names[DMAGATE(obj)->ignore_reset]);
}

static void dmagate_set_ignore_reset(Object *obj, const char *value,
                                     Error **errp)
{
    for (int i = 0; i < ARRAY_SIZE(ignore_reset_names); i++) {
        if (!strcmp(value, ignore_reset_names[i])) {
            DMAGATE(obj)->ignore_reset = i;
            return;
        }
    }
    error_setg(errp, "fault-ignore-reset: '%s' is not none, soft, flr or "
               "both", value);
}

static bool dmagate_get_dead(Object *obj, Error **errp)
{
    return DMAGATE(obj)->dead;
}

/* Dead: as if the device had left the bus, until cleared (or unplugged). */
static void dmagate_set_dead(Object *obj, bool value, Error **errp)
{
    DmagateState *s = DMAGATE(obj);

    if (s->dead == value) {
        return;
    }
    s->dead = value;
    trace_dmagate_dead(value);
    if (!DEVICE(obj)->realized) {
        return;
    }
    if (value) {
        dmagate_fired(s, DMAGATE_FAULT_DEAD, false, -1);
    }
    dmagate_storm_update(s);
    dmagate_update_intx(s);
    qemu_bh_schedule(s->bh);
}

static void dmagate_get_dma_log(Object *obj, Visitor *v, const char *name,
                                void *opaque, Error **errp)
{
    dmagate_dmalog_visit(&DMAGATE(obj)->dmalog, v, name, errp);
}

static void dmagate_get_dma_log_lost(Object *obj, Visitor *v,
                                     const char *name, void *opaque,
                                     Error **errp)
{
    uint64_t lost = dmagate_dmalog_lost(&DMAGATE(obj)->dmalog);

    visit_type_uint64(v, name, &lost, errp);
}

static void dmagate_get_dma_log_size(Object *obj, Visitor *v,
                                     const char *name, void *opaque,
                                     Error **errp)
{
    DmagateDmaLog *log = &DMAGATE(obj)->dmalog;
    uint32_t size = log->size ? log->size : DMAGATE_DMALOG_ENTRIES;

    visit_type_uint32(v, name, &size, errp);
}

static void dmagate_set_dma_log_size(Object *obj, Visitor *v,
                                     const char *name, void *opaque,
                                     Error **errp)
{
    uint32_t size;

    if (!visit_type_uint32(v, name, &size, errp)) {
        return;
    }
    if (!dmagate_dmalog_resize(&DMAGATE(obj)->dmalog, size)) {
        error_setg(errp, "dma-log-size %" PRIu32 ": use %u .. %u entries",
                   size, DMAGATE_DMALOG_MIN_ENTRIES,
                   DMAGATE_DMALOG_MAX_ENTRIES);
    }
}

static void dmagate_get_dma_log_since(Object *obj, Visitor *v,
                                      const char *name, void *opaque,
                                      Error **errp)
{
    visit_type_uint64(v, name, &DMAGATE(obj)->dmalog.since, errp);
}

static void dmagate_set_dma_log_since(Object *obj, Visitor *v,
                                      const char *name, void *opaque,
                                      Error **errp)
{
    visit_type_uint64(v, name, &DMAGATE(obj)->dmalog.since, errp);
}

static bool dmagate_get_zero_delay(Object *obj, Error **errp)
{
    return DMAGATE(obj)->zero_delay;
}

static void dmagate_set_zero_delay(Object *obj, bool value, Error **errp)
{
    DmagateState *s = DMAGATE(obj);

    s->zero_delay = value;
    if (s->bh) {
        qemu_bh_schedule(s->bh);
    }
}

static void dmagate_instance_init(Object *obj)
{
    DmagateState *s = DMAGATE(obj);

    s->latency_ns = 1000 * 1000;
    s->bandwidth_mbps = 1000;
    s->late_delay_ns = 1000 * 1000;
    s->irq_delay_ns = 1000 * 1000 * 1000;
}

/* The SG entries from @pos/@off on cover @left bytes, each one in range. */
static bool dmagate_sg_covers(DmagateState *s, uint32_t pos, uint32_t off,
                              uint64_t left)
{
    for (uint32_t i = pos; left; i++) {
        uint32_t from = i == pos ? off : 0;

        if (i >= s->sg_count || s->sg_len[i] == 0 ||
            s->sg_len[i] > DMAGATE_MAX_XFER || from >= s->sg_len[i] ||
            s->sg_addr[i] > UINT64_MAX - s->sg_len[i] + 1) {
            return false;
        }
        left -= MIN(left, s->sg_len[i] - from);
    }
    return true;
}

/* Why a descriptor in progress from a stream cannot be resumed, or NULL. */
static const char *dmagate_active_state_error(DmagateState *s)
{
    if (!dmagate_enabled(s) || FIELD_EX32(s->status, STATUS, HALTED)) {
        return "descriptor in progress on a disabled or halted device";
    }
    if (s->stage >= STAGE_COUNT) {
        return "descriptor stage";
    }
    if (s->index >= s->sq_size) {
        return "descriptor index";
    }
    if (s->result > DMAGATE_ST_SHORT) {
        return "descriptor result";
    }
    if (s->done > s->limit) {
        return "descriptor progress";
    }
    if (s->corrupt && s->opcode == DMAGATE_OP_CHECKSUM) {
        return "descriptor fault (a CHECKSUM writes nothing to corrupt)";
    }
    if (s->limit == 0) {
        return NULL;    /* refused or failed at once: nothing to walk */
    }
    if (s->opcode < DMAGATE_OP_FILL || s->opcode > DMAGATE_OP_TRANSFORM) {
        return "descriptor opcode";
    }
    if (s->length == 0 || s->length > DMAGATE_MAX_XFER ||
        s->limit > s->length) {
        return "descriptor length or limit";
    }
    if (s->sg_count == 0 || s->sg_count > DMAGATE_MAX_SEGMENTS ||
        !dmagate_sg_covers(s, s->sg_pos, s->sg_off, s->limit - s->done)) {
        return "descriptor SG list or position";
    }
    /* A late write walks the list again from its start. */
    if (s->late_write && s->stage < STAGE_LATE_WRITE &&
        (s->opcode == DMAGATE_OP_CHECKSUM ||
         !dmagate_sg_covers(s, 0, 0, s->done))) {
        return "descriptor late write";
    }
    return NULL;
}

/* Why the loaded state is not one the device can be in, or NULL. */
static const char *dmagate_state_error(DmagateState *s)
{
    const char *rules_error;

    if (s->ctrl & ~R_CTRL_ENABLE_MASK ||
        s->status & ~DMAGATE_STATUS_STORED ||
        (dmagate_enabled(s) != FIELD_EX32(s->ctrl, CTRL, ENABLE) &&
         !FIELD_EX32(s->status, STATUS, HALTED))) {
        return "CTRL or STATUS";
    }

    if ((s->int_status | s->int_mask | s->int_unsignalled) &
        ~DMAGATE_INT_ALL || s->cq_phase > 1) {
        return "interrupt or phase state";
    }
    /* Ring registers matter only while enabled; enabling re-checks them. */
    if (dmagate_enabled(s) &&
        (!dmagate_ring_ok(s->sq_base, s->sq_size, DMAGATE_DESC_SIZE) ||
         !dmagate_ring_ok(s->cq_base, s->cq_size, DMAGATE_CPL_SIZE) ||
         s->sq_head >= s->sq_size || s->sq_tail >= s->sq_size ||
         s->cq_head >= s->cq_size || s->cq_tail >= s->cq_size)) {
        return "ring registers";
    }
    for (int i = 0; i < ARRAY_SIZE(dmagate_u64_props); i++) {
        const DmagateU64Prop *prop = &dmagate_u64_props[i];

        if (dmagate_u64_range_error(prop,
                                    *(uint64_t *)((char *)s + prop->offset))) {
            return prop->name;
        }
    }
    if (s->ignore_reset >= ARRAY_SIZE(ignore_reset_names)) {
        return "fault-ignore-reset";
    }
    if (s->held >= HELD_COUNT || s->held_causes & ~DMAGATE_INT_ALL ||
        (s->held != HELD_NONE && !dmagate_enabled(s))) {
        return "held completion";
    }
    if (s->faults[DMAGATE_FAULT_SPURIOUS_IRQ] > DMAGATE_MAX_SPURIOUS) {
        return "fault-spurious-irq";
    }
    rules_error = dmagate_rules_check(&s->rules);
    if (rules_error) {
        return rules_error;
    }
    return s->active ? dmagate_active_state_error(s) : NULL;
}

static int dmagate_pre_save(void *opaque)
{
    DmagateState *s = opaque;
    PCIDevice *pdev = PCI_DEVICE(s);
    size_t table = DMAGATE_MSIX_VECTORS * PCI_MSIX_ENTRY_SIZE;

    memcpy(s->msix_state, pdev->msix_table, table);
    memcpy(s->msix_state + table, pdev->msix_pba,
           sizeof(s->msix_state) - table);
    return 0;
}

/*
 * Put the stream's MSI-X table and PBA in place without sending anything.
 * A vector pending while unmasked is no state a function can be in (the
 * unmask sends it): refused rather than sent from inside the load.
 */
static const char *dmagate_load_msix(DmagateState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    size_t table = DMAGATE_MSIX_VECTORS * PCI_MSIX_ENTRY_SIZE;
    uint8_t control = pdev->config[pdev->msix_cap + PCI_MSIX_FLAGS + 1];

    memcpy(pdev->msix_table, s->msix_state, table);
    memcpy(pdev->msix_pba, s->msix_state + table,
           sizeof(s->msix_state) - table);
    pdev->msix_function_masked = !msix_enabled(pdev) ||
                                 (control & (PCI_MSIX_FLAGS_MASKALL >> 8));
    for (int v = 0; v < DMAGATE_MSIX_VECTORS; v++) {
        bool pending = pdev->msix_pba[v / 8] & (1u << (v % 8));

        if (pending && !msix_is_masked(pdev, v)) {
            return "MSI-X vector pending while unmasked";
        }
    }
    return NULL;
}

/* Config-space state no write of the guest can leave behind. */
static const char *dmagate_config_state_error(DmagateState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint16_t pmcsr = pci_get_word(pdev->config + pdev->pm_cap + PCI_PM_CTRL);
    uint16_t devctl = pci_get_word(pdev->config + pdev->exp.exp_cap +
                                   PCI_EXP_DEVCTL);
    uint8_t state = pmcsr & PCI_PM_CTRL_STATE_MASK;

    if (state == 1 || state == 2) {
        return "power state (D1 and D2 are not supported)";
    }
    if (devctl & PCI_EXP_DEVCTL_BCR_FLR) {
        return "Device Control (FLR bit set)";
    }
    return NULL;
}

/* The stream is as untrusted as the guest: check everything it carries. */
static int dmagate_post_load(void *opaque, int version_id)
{
    DmagateState *s = opaque;
    const char *error = dmagate_config_state_error(s);

    if (!error) {
        error = dmagate_state_error(s);
    }
    if (!error) {
        error = dmagate_load_msix(s);
    }
    if (error) {
        error_report("%s: migration stream refused: invalid %s", TYPE_DMAGATE,
                     error);
        return -EINVAL;
    }
    /* The engine resumes when the VM runs (dmagate_vm_state_change). */
    return 0;
}

static const VMStateDescription vmstate_dmagate = {
    .name = TYPE_DMAGATE,
    .version_id = 3,
    .minimum_version_id = 3,
    .pre_save = dmagate_pre_save,
    .post_load = dmagate_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_PCI_DEVICE(parent_obj, DmagateState),
        VMSTATE_UINT8_ARRAY(msix_state, DmagateState,
                            DMAGATE_MSIX_VECTORS * PCI_MSIX_ENTRY_SIZE +
                            DIV_ROUND_UP(DMAGATE_MSIX_VECTORS, 8)),
        VMSTATE_UINT32(ctrl, DmagateState),
        VMSTATE_UINT32(status, DmagateState),
        VMSTATE_UINT32(error, DmagateState),
        VMSTATE_UINT32(error_index, DmagateState),
        VMSTATE_UINT64(error_addr, DmagateState),
        VMSTATE_UINT64(sq_base, DmagateState),
        VMSTATE_UINT32(sq_size, DmagateState),
        VMSTATE_UINT32(sq_head, DmagateState),
        VMSTATE_UINT32(sq_tail, DmagateState),
        VMSTATE_UINT64(cq_base, DmagateState),
        VMSTATE_UINT32(cq_size, DmagateState),
        VMSTATE_UINT32(cq_head, DmagateState),
        VMSTATE_UINT32(cq_tail, DmagateState),
        VMSTATE_UINT32(cq_phase, DmagateState),
        VMSTATE_UINT32(int_status, DmagateState),
        VMSTATE_UINT32(int_mask, DmagateState),
        VMSTATE_UINT32(int_unsignalled, DmagateState),
        VMSTATE_UINT32(time_hi, DmagateState),
        VMSTATE_UINT64_ARRAY(stats, DmagateState, STAT_COUNT),
        VMSTATE_BOOL(active, DmagateState),
        VMSTATE_UINT8(stage, DmagateState),
        VMSTATE_UINT32(index, DmagateState),
        VMSTATE_UINT8(opcode, DmagateState),
        VMSTATE_UINT8(flags, DmagateState),
        VMSTATE_UINT32(tag, DmagateState),
        VMSTATE_UINT32(length, DmagateState),
        VMSTATE_UINT64(param, DmagateState),
        VMSTATE_UINT32(sg_count, DmagateState),
        VMSTATE_UINT64_ARRAY(sg_addr, DmagateState, DMAGATE_MAX_SEGMENTS),
        VMSTATE_UINT32_ARRAY(sg_len, DmagateState, DMAGATE_MAX_SEGMENTS),
        VMSTATE_UINT32(sg_pos, DmagateState),
        VMSTATE_UINT32(sg_off, DmagateState),
        VMSTATE_UINT32(done, DmagateState),
        VMSTATE_UINT32(limit, DmagateState),
        VMSTATE_UINT16(result, DmagateState),
        VMSTATE_BOOL(accepted, DmagateState),
        VMSTATE_UINT32(crc, DmagateState),
        VMSTATE_BOOL(corrupt, DmagateState),
        VMSTATE_BOOL(drop_irq, DmagateState),
        VMSTATE_BOOL(duplicate, DmagateState),
        VMSTATE_INT64(due_ns, DmagateState),
        VMSTATE_INT64(cpl_time_ns, DmagateState),
        VMSTATE_TIMER_PTR(timer, DmagateState),
        VMSTATE_UINT64(latency_ns, DmagateState),
        VMSTATE_UINT64(bandwidth_mbps, DmagateState),
        VMSTATE_BOOL(zero_delay, DmagateState),
        VMSTATE_UINT32_ARRAY(faults, DmagateState, DMAGATE_FAULT_COUNTED),
        VMSTATE_UINT32(rules.count, DmagateState),
        VMSTATE_STRUCT_ARRAY(rules.rule, DmagateState, DMAGATE_MAX_RULES, 0,
                             vmstate_dmagate_rule, DmagateRule),
        VMSTATE_UINT64(extra_delay_ns, DmagateState),
        VMSTATE_UINT32(cpl_tag, DmagateState),
        VMSTATE_BOOL(delayed_irq, DmagateState),
        VMSTATE_BOOL(late_write, DmagateState),
        VMSTATE_UINT32(prev_tag, DmagateState),
        VMSTATE_BOOL(has_prev_tag, DmagateState),
        VMSTATE_BOOL(tag_valid, DmagateState),
        VMSTATE_UINT8(held, DmagateState),
        VMSTATE_UINT8_ARRAY(held_rec, DmagateState, DMAGATE_CPL_SIZE),
        VMSTATE_UINT32(held_causes, DmagateState),
        VMSTATE_BOOL(storm_announced, DmagateState),
        VMSTATE_TIMER_PTR(storm_timer, DmagateState),
        VMSTATE_UINT64(late_delay_ns, DmagateState),
        VMSTATE_UINT64(irq_delay_ns, DmagateState),
        VMSTATE_UINT64(storm_ns, DmagateState),
        VMSTATE_UINT8(ignore_reset, DmagateState),
        VMSTATE_BOOL(dead, DmagateState),
        VMSTATE_END_OF_LIST()
    },
};

static void dmagate_class_init(ObjectClass *oc, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(oc);
    PCIDeviceClass *pc = PCI_DEVICE_CLASS(oc);
    ResettableClass *rc = RESETTABLE_CLASS(oc);

    pc->realize = dmagate_realize;
    pc->exit = dmagate_exit;
    pc->config_read = dmagate_read_config;
    pc->config_write = dmagate_write_config;
    pc->vendor_id = DMAGATE_PCI_VENDOR_ID;
    pc->device_id = DMAGATE_PCI_DEVICE_ID;
    pc->revision = DMAGATE_PCI_REVISION;
    pc->class_id = DMAGATE_PCI_CLASS;
    rc->phases.hold = dmagate_reset_hold;
    dc->desc = "dmagate DMA test device";
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);

    dc->vmsd = &vmstate_dmagate;

    for (int i = 0; i < ARRAY_SIZE(dmagate_u64_props); i++) {
        const DmagateU64Prop *prop = &dmagate_u64_props[i];

        object_class_property_add(oc, prop->name, "uint64", dmagate_get_u64,
                                  dmagate_set_u64, NULL, (void *)prop);
        object_class_property_set_description(oc, prop->name,
                                              prop->description);
    }
    object_class_property_add_bool(oc, "zero-delay", dmagate_get_zero_delay,
                                   dmagate_set_zero_delay);
    object_class_property_set_description(oc, "zero-delay",
                                          "no latency, no bandwidth limit");
    for (int i = 0; i < DMAGATE_FAULT_COUNTED; i++) {
        /* The count properties are named after the faults' rule names. */
        g_autofree char *name = g_strconcat("fault-", dmagate_fault_name(i),
                                            NULL);

        object_class_property_add(oc, name, "uint32",
                                  dmagate_get_u32,
                                  i == DMAGATE_FAULT_SPURIOUS_IRQ ?
                                  dmagate_set_spurious : dmagate_set_u32,
                                  NULL,
                                  (void *)(offsetof(DmagateState, faults) +
                                           i * sizeof(uint32_t)));
        object_class_property_set_description(oc, name,
            "descriptors the fault hits next (4294967295: all)");
    }
    object_class_property_add_str(oc, "fault-rules", dmagate_get_rules,
                                  dmagate_set_rules);
    object_class_property_set_description(oc, "fault-rules",
        "rules FAULT[:KEY=VALUE]...;... (docs/device.md section 8)");
    object_class_property_add(oc, "fault-rule-status", "DmagateRuleStatus",
                              dmagate_get_rule_status, NULL, NULL, NULL);
    object_class_property_add_str(oc, "fault-ignore-reset",
                                  dmagate_get_ignore_reset,
                                  dmagate_set_ignore_reset);
    object_class_property_set_description(oc, "fault-ignore-reset",
        "resets the device ignores: none, soft, flr or both");
    object_class_property_add_bool(oc, "fault-dead", dmagate_get_dead,
                                   dmagate_set_dead);
    object_class_property_set_description(oc, "fault-dead",
        "answer nothing (all ones), no DMA, no interrupts");
    object_class_property_add(oc, "dma-log", "DmagateDmaAccessList",
                              dmagate_get_dma_log, NULL, NULL, NULL);
    object_class_property_set_description(oc, "dma-log",
        "the device's last dma-log-size bus accesses from dma-log-since on: "
        "seq, kind, dir, addr, len, ok, time-ns, sq-index");
    object_class_property_add(oc, "dma-log-size", "uint32",
                              dmagate_get_dma_log_size,
                              dmagate_set_dma_log_size, NULL, NULL);
    object_class_property_set_description(oc, "dma-log-size",
        "entries the dma-log ring holds (64 .. 1048576, default 8192); "
        "setting it empties the log");
    object_class_property_add(oc, "dma-log-since", "uint64",
                              dmagate_get_dma_log_since,
                              dmagate_set_dma_log_since, NULL, NULL);
    object_class_property_set_description(oc, "dma-log-since",
        "dma-log lists only accesses with this seq or later (default 0)");
    object_class_property_add(oc, "dma-log-lost", "uint64",
                              dmagate_get_dma_log_lost, NULL, NULL, NULL);
    object_class_property_set_description(oc, "dma-log-lost",
        "accesses the dma-log ring has overwritten");
    for (int i = 0; i < STAT_COUNT; i++) {
        object_class_property_add(oc, stat_names[i], "uint64",
                                  dmagate_get_stat, NULL, NULL,
                                  (void *)(offsetof(DmagateState, stats) +
                                           i * sizeof(uint64_t)));
    }
}

static const TypeInfo dmagate_info = {
    .name = TYPE_DMAGATE,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(DmagateState),
    .instance_init = dmagate_instance_init,
    .instance_finalize = dmagate_instance_finalize,
    .class_init = dmagate_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_PCIE_DEVICE },
        { },
    },
};

static void dmagate_register_types(void)
{
    type_register_static(&dmagate_info);
}

type_init(dmagate_register_types)
