/*
 * dmagate: a PCIe DMA test device
 *
 * Descriptor rings in guest memory, scatter-gather bus-master DMA through
 * the PCI DMA API (so bus-master enable and the IOMMU apply), a settable
 * timing model, completion records, MSI-X/MSI/INTx, and fault injection
 * through QOM properties. docs/device.md in the dmagate project is the
 * datasheet; dmagate_hw.h carries its numbers.
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qemu/module.h"
#include "qemu/range.h"
#include "qemu/timer.h"
#include "qemu/units.h"
#include "qemu/main-loop.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/pci/pcie.h"
#include "hw/registerfields.h"
#include "migration/vmstate.h"
#include "system/dma.h"
#include <zlib.h>

#include "dmagate_hw.h"
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

/* Statistics registers: 64-bit counters from DMAGATE_REG_STAT_DESCRIPTORS. */
enum {
    STAT_DESCRIPTORS,
    STAT_BYTES,
    STAT_INTERRUPTS,
    STAT_ERRORS,
    STAT_FAULTS,
    STAT_COUNT,
};

enum {
    FAULT_DMA_ERROR,
    FAULT_DROP_IRQ,
    FAULT_SPURIOUS_IRQ,
    FAULT_DUPLICATE_COMPLETION,
    FAULT_CORRUPT,
    FAULT_PARTIAL,
    FAULT_STALL,
    FAULT_COUNT,
};

static const char *const fault_names[FAULT_COUNT] = {
    [FAULT_DMA_ERROR] = "fault-dma-error",
    [FAULT_DROP_IRQ] = "fault-drop-irq",
    [FAULT_SPURIOUS_IRQ] = "fault-spurious-irq",
    [FAULT_DUPLICATE_COMPLETION] = "fault-duplicate-completion",
    [FAULT_CORRUPT] = "fault-corrupt",
    [FAULT_PARTIAL] = "fault-partial",
    [FAULT_STALL] = "fault-stall",
};

static const char *const stat_names[STAT_COUNT] = {
    [STAT_DESCRIPTORS] = "stat-descriptors",
    [STAT_BYTES] = "stat-bytes",
    [STAT_INTERRUPTS] = "stat-interrupts",
    [STAT_ERRORS] = "stat-errors",
    [STAT_FAULTS] = "stat-faults",
};

/* A timed step moves at most this much; a bottom half at most the budget. */
#define DMAGATE_CHUNK (256 * KiB)
#define DMAGATE_BH_BUDGET (1 * MiB)
#define DMAGATE_CORRUPT_STRIDE 4096
#define DMAGATE_MAX_SPURIOUS 1024

typedef struct DmagateState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;
    QEMUTimer *timer;
    uint8_t *bounce;

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
    uint32_t time_hi;
    uint64_t stats[STAT_COUNT];

    /* The descriptor in progress (valid while active) */
    bool active;
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
    uint32_t crc;
    bool corrupt;
    bool drop_irq;
    bool duplicate;
    int64_t due_ns;         /* next chunk, or the completion, not before */

    /* Configuration: QOM properties, settable at runtime */
    uint64_t latency_ns;
    uint64_t bandwidth_mbps;
    bool zero_delay;
    uint32_t faults[FAULT_COUNT];
    uint64_t extra_delay_ns;
} DmagateState;

static void dmagate_run(void *opaque);

static int64_t dmagate_now(void)
{
    return qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
}

static bool dmagate_enabled(DmagateState *s)
{
    return FIELD_EX32(s->status, STATUS, ENABLED);
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

/* Fault knobs: true if the fault fires for this descriptor. */
static bool dmagate_fault_fires(DmagateState *s, int fault)
{
    if (!s->faults[fault]) {
        return false;
    }
    if (s->faults[fault] != DMAGATE_FAULT_ALWAYS) {
        s->faults[fault]--;
    }
    s->stats[STAT_FAULTS]++;
    trace_dmagate_fault(fault_names[fault]);
    return true;
}

/* Interrupts */

static void dmagate_update_intx(DmagateState *s)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    bool level = false;

    if (!msix_enabled(pdev) && !msi_enabled(pdev)) {
        level = s->int_status & ~s->int_mask & DMAGATE_INT_ALL;
    }
    pci_set_irq(pdev, level);
}

/* Send one message for each cause in @causes that is not masked. */
static void dmagate_signal(DmagateState *s, uint32_t causes)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    causes &= ~s->int_mask;
    if (!causes) {
        return;
    }
    if (msix_enabled(pdev)) {
        if (causes & R_INT_COMPLETION_MASK) {
            msix_notify(pdev, DMAGATE_MSIX_VEC_COMPLETION);
            s->stats[STAT_INTERRUPTS]++;
            trace_dmagate_irq(causes, "msix");
        }
        if (causes & R_INT_ERROR_MASK) {
            msix_notify(pdev, DMAGATE_MSIX_VEC_ERROR);
            s->stats[STAT_INTERRUPTS]++;
            trace_dmagate_irq(causes, "msix");
        }
    } else if (msi_enabled(pdev)) {
        msi_notify(pdev, 0);
        s->stats[STAT_INTERRUPTS]++;
        trace_dmagate_irq(causes, "msi");
    } else {
        s->stats[STAT_INTERRUPTS]++;
        trace_dmagate_irq(causes, "intx");
    }
}

/* Latch @causes; signal those that were not latched already. */
static void dmagate_raise(DmagateState *s, uint32_t causes)
{
    uint32_t newly = causes & ~s->int_status;

    s->int_status |= causes;
    dmagate_signal(s, newly);
    dmagate_update_intx(s);
}

/* A device error outside any completion: latch it, interrupt, halt. */
static void dmagate_halt(DmagateState *s, const char *what, uint32_t code,
                         uint64_t addr)
{
    dmagate_guest_error(s, what, code, addr);
    s->error_index = s->sq_head;
    s->status = FIELD_DP32(s->status, STATUS, HALTED, 1);
    s->status = FIELD_DP32(s->status, STATUS, BUSY, 0);
    s->stats[STAT_ERRORS]++;
    s->active = false;
    timer_del(s->timer);
    trace_dmagate_halt(code, addr);
    dmagate_raise(s, R_INT_ERROR_MASK);
}

/* Data */

static uint64_t dmagate_mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ULL;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z;
}

/* The FILL pattern for transfer offsets [@offset, @offset + @len). */
static void dmagate_pattern(uint8_t *buf, uint64_t offset, size_t len,
                            uint64_t seed)
{
    size_t i = 0;

    while (i < len) {
        uint64_t pos = offset + i;
        uint64_t word = dmagate_mix64(seed ^ ((pos / 8) * DMAGATE_FILL_GOLDEN));

        if (pos % 8 == 0 && len - i >= 8) {
            stq_le_p(buf + i, word);
            i += 8;
        } else {
            buf[i++] = word >> (8 * (pos % 8));
        }
    }
}

static void dmagate_xor_key(uint8_t *buf, uint64_t offset, size_t len,
                            uint64_t key)
{
    for (size_t i = 0; i < len; i++) {
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

static bool dmagate_hits_own_bar(DmagateState *s, uint64_t addr, uint64_t len)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    static const int bars[] = { DMAGATE_REGS_BAR, DMAGATE_MSIX_BAR };

    for (int i = 0; i < ARRAY_SIZE(bars); i++) {
        pcibus_t base = pci_get_bar_addr(pdev, bars[i]);

        if (base != PCI_BAR_UNMAPPED &&
            ranges_overlap(addr, len, base, pdev->io_regions[bars[i]].size)) {
            return true;
        }
    }
    return false;
}

static bool dmagate_bus_master(DmagateState *s)
{
    return pci_get_word(PCI_DEVICE(s)->config + PCI_COMMAND) &
           PCI_COMMAND_MASTER;
}

/*
 * Move up to @budget bytes of the current descriptor at the current SG
 * position. Returns the number of bytes moved; on a DMA failure ends the
 * transfer with DMA_ERROR.
 */
static uint32_t dmagate_step(DmagateState *s, uint32_t budget)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint32_t seg_left = s->sg_len[s->sg_pos] - s->sg_off;
    uint32_t n = MIN(MIN(budget, seg_left), s->limit - s->done);
    uint64_t addr = s->sg_addr[s->sg_pos] + s->sg_off;
    MemTxResult res = MEMTX_OK;

    if (!dmagate_bus_master(s)) {
        s->result = DMAGATE_ST_BUS_MASTER_OFF;
        s->limit = s->done;
        return 0;
    }
    if (dmagate_hits_own_bar(s, addr, n)) {
        dmagate_guest_error(s, "DMA aimed at the device's own BAR",
                            DMAGATE_ST_DMA_ERROR, addr);
        s->result = DMAGATE_ST_DMA_ERROR;
        s->limit = s->done;
        return 0;
    }

    switch (s->opcode) {
    case DMAGATE_OP_FILL:
        dmagate_pattern(s->bounce, s->done, n, s->param);
        s->crc = crc32(s->crc, s->bounce, n);
        if (s->corrupt) {
            dmagate_corrupt(s->bounce, s->done, n);
        }
        res = pci_dma_write(pdev, addr, s->bounce, n);
        break;
    case DMAGATE_OP_CHECKSUM:
        res = pci_dma_read(pdev, addr, s->bounce, n);
        s->crc = crc32(s->crc, s->bounce, n);
        break;
    case DMAGATE_OP_TRANSFORM:
        res = pci_dma_read(pdev, addr, s->bounce, n);
        if (res != MEMTX_OK) {
            break;
        }
        dmagate_xor_key(s->bounce, s->done, n, s->param);
        s->crc = crc32(s->crc, s->bounce, n);
        if (s->corrupt) {
            dmagate_corrupt(s->bounce, s->done, n);
        }
        res = pci_dma_write(pdev, addr, s->bounce, n);
        break;
    default:
        g_assert_not_reached();
    }

    if (res != MEMTX_OK) {
        dmagate_guest_error(s, "DMA to or from the SG list failed",
                            DMAGATE_ST_DMA_ERROR, addr);
        trace_dmagate_dma_error(s->index, addr);
        s->result = DMAGATE_ST_DMA_ERROR;
        s->limit = s->done;
        return 0;
    }

    trace_dmagate_chunk(s->index, s->done, n);
    s->done += n;
    s->sg_off += n;
    if (s->sg_off == s->sg_len[s->sg_pos]) {
        s->sg_pos++;
        s->sg_off = 0;
    }
    return n;
}

/* Descriptors */

/* Validate the descriptor and its SG list; a status code, 0 if fine. */
static uint16_t dmagate_check_desc(DmagateState *s, const uint8_t *desc)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint8_t raw[DMAGATE_SG_SIZE];
    uint64_t list = ldq_le_p(desc + DMAGATE_DESC_SG_ADDR);
    uint64_t covered = 0;

    if (s->opcode < DMAGATE_OP_FILL || s->opcode > DMAGATE_OP_TRANSFORM) {
        return DMAGATE_ST_BAD_OPCODE;
    }
    if ((s->flags & ~DMAGATE_DESC_F_INTERRUPT) ||
        lduw_le_p(desc + DMAGATE_DESC_RESERVED)) {
        return DMAGATE_ST_BAD_DESCRIPTOR;
    }
    if (s->length == 0 || s->length > DMAGATE_MAX_XFER) {
        return DMAGATE_ST_BAD_LENGTH;
    }
    if (s->sg_count == 0 || s->sg_count > DMAGATE_MAX_SEGMENTS ||
        list % DMAGATE_SG_SIZE ||
        list > UINT64_MAX - (uint64_t)s->sg_count * DMAGATE_SG_SIZE) {
        return DMAGATE_ST_BAD_SG;
    }

    for (uint32_t i = 0; i < s->sg_count && covered < s->length; i++) {
        uint64_t entry = list + (uint64_t)i * DMAGATE_SG_SIZE;

        if (pci_dma_read(pdev, entry, raw, sizeof(raw)) != MEMTX_OK) {
            dmagate_guest_error(s, "cannot read SG list",
                                DMAGATE_ST_DMA_ERROR, entry);
            return DMAGATE_ST_DMA_ERROR;
        }
        s->sg_addr[i] = ldq_le_p(raw + DMAGATE_SG_ADDR);
        s->sg_len[i] = ldl_le_p(raw + DMAGATE_SG_LEN);
        if (s->sg_len[i] == 0 || s->sg_len[i] > DMAGATE_MAX_XFER ||
            ldl_le_p(raw + DMAGATE_SG_RESERVED) ||
            s->sg_addr[i] > UINT64_MAX - s->sg_len[i] + 1) {
            dmagate_guest_error(s, "bad SG entry", DMAGATE_ST_BAD_SG, entry);
            return DMAGATE_ST_BAD_SG;
        }
        covered += s->sg_len[i];
    }
    if (covered < s->length) {
        return DMAGATE_ST_BAD_SG;
    }
    return DMAGATE_ST_OK;
}

static uint32_t dmagate_half(uint32_t length)
{
    uint32_t half = (length / 2) & ~4095u;

    return half ? half : length / 2;
}

/* Take the descriptor at SQ_HEAD. False if the device had to halt. */
static bool dmagate_fetch(DmagateState *s)
{
    uint8_t desc[DMAGATE_DESC_SIZE];
    uint64_t addr = s->sq_base + (uint64_t)s->sq_head * DMAGATE_DESC_SIZE;
    int64_t delay;

    if (pci_dma_read(PCI_DEVICE(s), addr, desc, sizeof(desc)) != MEMTX_OK) {
        dmagate_halt(s, "cannot read descriptor", DMAGATE_ST_BAD_RING, addr);
        return false;
    }

    s->active = true;
    s->index = s->sq_head;
    s->opcode = desc[DMAGATE_DESC_OPCODE];
    s->flags = desc[DMAGATE_DESC_FLAGS];
    s->tag = ldl_le_p(desc + DMAGATE_DESC_TAG);
    s->sg_count = ldl_le_p(desc + DMAGATE_DESC_SG_COUNT);
    s->length = ldl_le_p(desc + DMAGATE_DESC_LENGTH);
    s->param = ldq_le_p(desc + DMAGATE_DESC_PARAM);
    s->sg_pos = 0;
    s->sg_off = 0;
    s->done = 0;
    s->crc = crc32(0, NULL, 0);
    s->corrupt = false;
    s->drop_irq = false;
    s->duplicate = false;
    trace_dmagate_desc_fetch(s->index, s->opcode, s->tag, s->length,
                             s->sg_count);

    s->result = dmagate_check_desc(s, desc);
    if (s->result != DMAGATE_ST_OK) {
        trace_dmagate_desc_invalid(s->index, s->result);
        s->limit = 0;
        s->due_ns = dmagate_now();
        return true;
    }

    s->limit = s->length;
    if (dmagate_fault_fires(s, FAULT_STALL)) {
        s->status = FIELD_DP32(s->status, STATUS, STALLED, 1);
    }
    if (dmagate_fault_fires(s, FAULT_DMA_ERROR)) {
        s->limit = dmagate_half(s->length);
        s->result = DMAGATE_ST_DMA_ERROR;
    } else if (dmagate_fault_fires(s, FAULT_PARTIAL)) {
        s->limit = dmagate_half(s->length);
        s->result = DMAGATE_ST_SHORT;
    }
    s->corrupt = dmagate_fault_fires(s, FAULT_CORRUPT);
    s->drop_irq = dmagate_fault_fires(s, FAULT_DROP_IRQ);
    s->duplicate = dmagate_fault_fires(s, FAULT_DUPLICATE_COMPLETION);

    delay = s->zero_delay ? 0 : s->latency_ns;
    s->due_ns = dmagate_now() + delay + s->extra_delay_ns;
    return true;
}

static bool dmagate_cq_full(DmagateState *s)
{
    return (s->cq_tail + 1) % s->cq_size == s->cq_head;
}

static bool dmagate_post(DmagateState *s, const uint8_t *cpl)
{
    uint64_t addr = s->cq_base + (uint64_t)s->cq_tail * DMAGATE_CPL_SIZE;
    uint8_t rec[DMAGATE_CPL_SIZE];

    memcpy(rec, cpl, sizeof(rec));
    stw_le_p(rec + DMAGATE_CPL_FLAGS, s->cq_phase ? DMAGATE_CPL_F_PHASE : 0);
    if (pci_dma_write(PCI_DEVICE(s), addr, rec, sizeof(rec)) != MEMTX_OK) {
        dmagate_halt(s, "cannot write completion", DMAGATE_ST_BAD_RING, addr);
        return false;
    }
    s->cq_tail = (s->cq_tail + 1) % s->cq_size;
    if (s->cq_tail == 0) {
        s->cq_phase ^= 1;
    }
    return true;
}

/* Finish the current descriptor. False if it must wait (CQ full) or halted. */
static bool dmagate_complete(DmagateState *s)
{
    uint8_t cpl[DMAGATE_CPL_SIZE] = { 0 };
    uint32_t causes = 0;

    if (dmagate_cq_full(s)) {
        trace_dmagate_cq_full(s->cq_head, s->cq_tail);
        return false;
    }
    if (s->result == DMAGATE_ST_OK && s->done < s->length) {
        s->result = DMAGATE_ST_SHORT;
    }

    stl_le_p(cpl + DMAGATE_CPL_TAG, s->tag);
    stw_le_p(cpl + DMAGATE_CPL_STATUS, s->result);
    stl_le_p(cpl + DMAGATE_CPL_BYTES_DONE, s->done);
    stl_le_p(cpl + DMAGATE_CPL_CRC, s->crc);
    stq_le_p(cpl + DMAGATE_CPL_TIMESTAMP, dmagate_now());
    stl_le_p(cpl + DMAGATE_CPL_SQ_INDEX, s->index);
    if (!dmagate_post(s, cpl)) {
        return false;
    }
    if (s->duplicate && !dmagate_cq_full(s) && !dmagate_post(s, cpl)) {
        return false;
    }

    trace_dmagate_complete(s->index, s->tag, s->result, s->done, s->crc);
    s->active = false;
    s->sq_head = (s->sq_head + 1) % s->sq_size;
    s->stats[STAT_DESCRIPTORS]++;
    s->stats[STAT_BYTES] += s->done;
    if (s->result != DMAGATE_ST_OK) {
        s->stats[STAT_ERRORS]++;
        s->error = s->result;
        s->error_index = s->index;
        causes |= R_INT_ERROR_MASK;
    }
    if (s->flags & DMAGATE_DESC_F_INTERRUPT) {
        causes |= R_INT_COMPLETION_MASK;
    }
    if (causes && !s->drop_irq) {
        dmagate_raise(s, causes);
    }
    return true;
}

static int64_t dmagate_transfer_ns(DmagateState *s, uint32_t bytes)
{
    if (s->zero_delay || !s->bandwidth_mbps) {
        return 0;
    }
    /* 1 MB/s moves one byte per microsecond. */
    return muldiv64(bytes, 1000, s->bandwidth_mbps);
}

/*
 * The engine, run from a reentrancy-guarded bottom half: take descriptors
 * in order, move their data in timed chunks, post completions. It stops
 * when it must wait for time (the timer re-schedules it), for the driver
 * (doorbell or CQ_HEAD), or when its per-run budget is spent.
 */
static void dmagate_run(void *opaque)
{
    DmagateState *s = opaque;
    uint32_t budget = DMAGATE_BH_BUDGET;

    while (dmagate_enabled(s) &&
           !FIELD_EX32(s->status, STATUS, HALTED) &&
           !FIELD_EX32(s->status, STATUS, STALLED)) {
        if (!s->active) {
            if (s->sq_head == s->sq_tail) {
                break;
            }
            if (!dmagate_bus_master(s)) {
                dmagate_guest_error(s, "doorbell with bus mastering off",
                                    DMAGATE_ST_BUS_MASTER_OFF, 0);
                dmagate_raise(s, R_INT_ERROR_MASK);
                break;
            }
            if (!dmagate_fetch(s)) {
                return;
            }
            s->status = FIELD_DP32(s->status, STATUS, BUSY, 1);
            continue;
        }
        if (!s->zero_delay && dmagate_now() < s->due_ns) {
            timer_mod(s->timer, s->due_ns);
            return;
        }
        if (s->done < s->limit) {
            uint32_t moved;

            if (!budget) {
                qemu_bh_schedule(s->bh);
                return;
            }
            moved = dmagate_step(s, MIN(budget, DMAGATE_CHUNK));
            budget -= moved;
            s->due_ns += dmagate_transfer_ns(s, moved);
            continue;
        }
        if (!dmagate_complete(s)) {
            return;
        }
    }
    if (!s->active) {
        s->status = FIELD_DP32(s->status, STATUS, BUSY, 0);
    }
}

static void dmagate_timer_cb(void *opaque)
{
    DmagateState *s = opaque;

    qemu_bh_schedule(s->bh);
}

/* Reset */

static void dmagate_reset_state(DmagateState *s, const char *why)
{
    trace_dmagate_reset(why);
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
    s->time_hi = 0;
    memset(s->stats, 0, sizeof(s->stats));
    s->active = false;
    dmagate_update_intx(s);
}

static void dmagate_reset_hold(Object *obj, ResetType type)
{
    dmagate_reset_state(DMAGATE(obj), "device");
}

/* Registers */

static bool dmagate_ring_ok(uint64_t base, uint32_t size, uint32_t entry)
{
    return size >= DMAGATE_MIN_RING_SIZE && size <= DMAGATE_MAX_RING_SIZE &&
           is_power_of_2(size) && base % DMAGATE_RING_ALIGN == 0 &&
           base <= UINT64_MAX - (uint64_t)size * entry + 1;
}

static void dmagate_enable(DmagateState *s)
{
    if (!dmagate_ring_ok(s->sq_base, s->sq_size, DMAGATE_DESC_SIZE)) {
        dmagate_halt(s, "bad submission ring", DMAGATE_ST_BAD_RING,
                     s->sq_base);
        return;
    }
    if (!dmagate_ring_ok(s->cq_base, s->cq_size, DMAGATE_CPL_SIZE)) {
        dmagate_halt(s, "bad completion ring", DMAGATE_ST_BAD_RING,
                     s->cq_base);
        return;
    }
    s->sq_head = s->sq_tail = 0;
    s->cq_head = s->cq_tail = 0;
    s->cq_phase = 1;
    s->status = FIELD_DP32(s->status, STATUS, ENABLED, 1);
    trace_dmagate_enable(s->sq_base, s->sq_size, s->cq_base, s->cq_size);
}

static void dmagate_write_ctrl(DmagateState *s, uint32_t val)
{
    if (FIELD_EX32(val, CTRL, RESET)) {
        dmagate_reset_state(s, "soft");
        return;
    }
    if (val & ~R_CTRL_ENABLE_MASK) {
        dmagate_guest_error(s, "reserved CTRL bits set",
                            DMAGATE_ST_BAD_DESCRIPTOR, val);
    }
    if (FIELD_EX32(val, CTRL, ENABLE) && !FIELD_EX32(s->ctrl, CTRL, ENABLE)) {
        s->ctrl = R_CTRL_ENABLE_MASK;
        if (!FIELD_EX32(s->status, STATUS, HALTED)) {
            dmagate_enable(s);
        }
    } else if (!FIELD_EX32(val, CTRL, ENABLE)) {
        /* Disabling abandons a descriptor in flight; rings stay set up. */
        s->ctrl = 0;
        s->active = false;
        timer_del(s->timer);
        s->status &= ~(R_STATUS_ENABLED_MASK | R_STATUS_BUSY_MASK |
                       R_STATUS_STALLED_MASK);
    }
}

static bool dmagate_ring_reg_writable(DmagateState *s, hwaddr addr)
{
    if (dmagate_enabled(s)) {
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

static uint64_t dmagate_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    DmagateState *s = opaque;
    uint64_t now;
    uint32_t val = 0;

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
        val = s->status;
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
    case A_INT_MASK: {
        uint32_t unmasked = s->int_mask & ~val;

        s->int_mask = val & DMAGATE_INT_ALL;
        /* Causes latched while masked signal when unmasked. */
        dmagate_signal(s, s->int_status & unmasked);
        dmagate_update_intx(s);
        break;
    }
    case A_INT_ACK:
        s->int_status &= ~val;
        dmagate_update_intx(s);
        break;
    default:
        qemu_log_mask(LOG_GUEST_ERROR, "%s: write of 0x%" PRIx32
                      " to read-only or undefined register 0x%"
                      HWADDR_PRIx "\n", TYPE_DMAGATE, val, addr);
        break;
    }
}

static const MemoryRegionOps dmagate_mmio_ops = {
    .read = dmagate_mmio_read,
    .write = dmagate_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = {
        .min_access_size = 4,
        .max_access_size = 4,
        .unaligned = false,
    },
    .impl = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
};

/* PCI */

static void dmagate_write_config(PCIDevice *pdev, uint32_t addr, uint32_t val,
                                 int len)
{
    DmagateState *s = DMAGATE(pdev);

    pci_default_write_config(pdev, addr, val, len);
    pcie_cap_flr_write_config(pdev, addr, val, len);
    /* Enabling MSI or MSI-X hands the interrupt over from INTx. */
    dmagate_update_intx(s);
}

static void dmagate_realize(PCIDevice *pdev, Error **errp)
{
    DmagateState *s = DMAGATE(pdev);

    pci_config_set_interrupt_pin(pdev->config, 1);
    memory_region_init_io(&s->mmio, OBJECT(s), &dmagate_mmio_ops, s,
                          "dmagate-regs", DMAGATE_REGS_SIZE);
    pci_register_bar(pdev, DMAGATE_REGS_BAR, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->mmio);

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

    s->bounce = g_malloc(DMAGATE_CHUNK);
    s->bh = qemu_bh_new_guarded(dmagate_run, s,
                                &DEVICE(pdev)->mem_reentrancy_guard);
    s->timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, dmagate_timer_cb, s);
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

    timer_free(s->timer);
    qemu_bh_delete(s->bh);
    g_free(s->bounce);
    msix_unuse_all_vectors(pdev);
    msix_uninit_exclusive_bar(pdev);
    msi_uninit(pdev);
    pcie_cap_exit(pdev);
    pci_set_irq(pdev, 0);
}

/* QOM properties: configuration and fault knobs, settable at runtime. */

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

static void dmagate_get_u64(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    uint64_t *field = (uint64_t *)((char *)obj + (uintptr_t)opaque);

    visit_type_uint64(v, name, field, errp);
}

static void dmagate_set_u64(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    DmagateState *s = DMAGATE(obj);
    uint64_t *field = (uint64_t *)((char *)obj + (uintptr_t)opaque);

    if (visit_type_uint64(v, name, field, errp) && s->bh) {
        /* A changed timing applies to what is still to come. */
        qemu_bh_schedule(s->bh);
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
        error_setg(errp, "%s: at most %u interrupts at a time", name,
                   DMAGATE_MAX_SPURIOUS);
        return;
    }
    if (!DEVICE(obj)->realized) {
        s->faults[FAULT_SPURIOUS_IRQ] = count;
        return;
    }
    for (uint32_t i = 0; i < count; i++) {
        s->stats[STAT_FAULTS]++;
        trace_dmagate_fault(name);
        s->int_status |= R_INT_COMPLETION_MASK;
        dmagate_signal(s, R_INT_COMPLETION_MASK);
    }
    dmagate_update_intx(s);
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
}

/* The stream is as untrusted as the guest: check what indexes memory. */
static int dmagate_post_load(void *opaque, int version_id)
{
    DmagateState *s = opaque;

    if ((s->sq_size && (s->sq_head >= s->sq_size ||
                        s->sq_tail >= s->sq_size)) ||
        (s->cq_size && (s->cq_head >= s->cq_size ||
                        s->cq_tail >= s->cq_size))) {
        return -EINVAL;
    }
    if (s->active &&
        (s->sg_count > DMAGATE_MAX_SEGMENTS || s->limit > s->length ||
         s->done > s->limit || s->sg_pos > s->sg_count ||
         (s->done < s->limit &&
          (s->sg_pos == s->sg_count ||
           s->sg_off >= s->sg_len[s->sg_pos])))) {
        return -EINVAL;
    }
    qemu_bh_schedule(s->bh);
    return 0;
}

static const VMStateDescription vmstate_dmagate = {
    .name = TYPE_DMAGATE,
    .version_id = 1,
    .minimum_version_id = 1,
    .post_load = dmagate_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_PCI_DEVICE(parent_obj, DmagateState),
        VMSTATE_MSIX(parent_obj, DmagateState),
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
        VMSTATE_UINT32(time_hi, DmagateState),
        VMSTATE_UINT64_ARRAY(stats, DmagateState, STAT_COUNT),
        VMSTATE_BOOL(active, DmagateState),
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
        VMSTATE_UINT32(crc, DmagateState),
        VMSTATE_BOOL(corrupt, DmagateState),
        VMSTATE_BOOL(drop_irq, DmagateState),
        VMSTATE_BOOL(duplicate, DmagateState),
        VMSTATE_INT64(due_ns, DmagateState),
        VMSTATE_TIMER_PTR(timer, DmagateState),
        VMSTATE_UINT64(latency_ns, DmagateState),
        VMSTATE_UINT64(bandwidth_mbps, DmagateState),
        VMSTATE_BOOL(zero_delay, DmagateState),
        VMSTATE_UINT32_ARRAY(faults, DmagateState, FAULT_COUNT),
        VMSTATE_UINT64(extra_delay_ns, DmagateState),
        VMSTATE_END_OF_LIST()
    },
};

static void dmagate_class_init(ObjectClass *oc, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(oc);
    PCIDeviceClass *pc = PCI_DEVICE_CLASS(oc);
    ResettableClass *rc = RESETTABLE_CLASS(oc);
    static const struct {
        const char *name;
        const char *description;
        size_t offset;
    } u64_props[] = {
        { "latency-ns", "start latency of each descriptor (ns)",
          offsetof(DmagateState, latency_ns) },
        { "bandwidth-mbps", "transfer rate in MB/s (0: unlimited)",
          offsetof(DmagateState, bandwidth_mbps) },
        { "fault-extra-delay-ns", "extra time added to every descriptor",
          offsetof(DmagateState, extra_delay_ns) },
    };

    pc->realize = dmagate_realize;
    pc->exit = dmagate_exit;
    pc->config_write = dmagate_write_config;
    pc->vendor_id = DMAGATE_PCI_VENDOR_ID;
    pc->device_id = DMAGATE_PCI_DEVICE_ID;
    pc->revision = DMAGATE_PCI_REVISION;
    pc->class_id = DMAGATE_PCI_CLASS;
    rc->phases.hold = dmagate_reset_hold;
    dc->desc = "dmagate DMA test device";
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);

    dc->vmsd = &vmstate_dmagate;

    for (int i = 0; i < ARRAY_SIZE(u64_props); i++) {
        object_class_property_add(oc, u64_props[i].name, "uint64",
                                  dmagate_get_u64, dmagate_set_u64, NULL,
                                  (void *)u64_props[i].offset);
        object_class_property_set_description(oc, u64_props[i].name,
                                              u64_props[i].description);
    }
    object_class_property_add_bool(oc, "zero-delay", dmagate_get_zero_delay,
                                   dmagate_set_zero_delay);
    object_class_property_set_description(oc, "zero-delay",
                                          "no latency, no bandwidth limit");
    for (int i = 0; i < FAULT_COUNT; i++) {
        object_class_property_add(oc, fault_names[i], "uint32",
                                  dmagate_get_u32,
                                  i == FAULT_SPURIOUS_IRQ ?
                                  dmagate_set_spurious : dmagate_set_u32,
                                  NULL,
                                  (void *)(offsetof(DmagateState, faults) +
                                           i * sizeof(uint32_t)));
        object_class_property_set_description(oc, fault_names[i],
            "descriptors the fault hits next (4294967295: all)");
    }
    for (int i = 0; i < STAT_COUNT; i++) {
        object_class_property_add(oc, stat_names[i], "uint64",
                                  dmagate_get_u64, NULL, NULL,
                                  (void *)(offsetof(DmagateState, stats) +
                                           i * sizeof(uint64_t)));
    }
}

static const TypeInfo dmagate_info = {
    .name = TYPE_DMAGATE,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(DmagateState),
    .instance_init = dmagate_instance_init,
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
