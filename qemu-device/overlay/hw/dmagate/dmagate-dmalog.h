/*
 * dmagate: the DMA access log
 *
 * Every memory access the device makes on the bus (descriptor and SG list
 * reads, data, completion records, interrupt messages), in a bounded ring
 * that QMP reads (the "dma-log" property). It lets a test check, from the
 * device's side, that no DMA touched a page outside the window in which
 * the driver had given it to the device. Diagnostics, not device state:
 * it is not migrated and no reset clears it.
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_DMAGATE_DMALOG_H
#define HW_DMAGATE_DMALOG_H

#include "qapi/visitor.h"

/* What an access was for. */
typedef enum {
    DMALOG_DESCRIPTOR,
    DMALOG_SG_LIST,
    DMALOG_DATA,
    DMALOG_COMPLETION,
    DMALOG_INTERRUPT,
    DMALOG_KIND_COUNT,
} DmagateDmaKind;

#define DMALOG_READ     1u
#define DMALOG_WRITE    2u

/* The index of an access that is for no descriptor (an interrupt). */
#define DMALOG_NO_INDEX UINT32_MAX

/* Entries the ring holds: the default and the range of "dma-log-size". */
#define DMAGATE_DMALOG_ENTRIES 8192
#define DMAGATE_DMALOG_MIN_ENTRIES 64
#define DMAGATE_DMALOG_MAX_ENTRIES (1u << 20)

typedef struct DmagateDmaAccess {
    uint64_t seq;           /* 1, 2, ... in the order made */
    uint64_t addr;          /* bus address (before any IOMMU) */
    uint32_t len;
    uint32_t index;         /* SQ index of the descriptor, or NO_INDEX */
    int64_t time_ns;        /* device clock (the TIME register) */
    uint8_t kind;
    uint8_t dir;            /* DMALOG_READ | DMALOG_WRITE */
    bool ok;                /* the bus took it (not refused, not failed) */
} DmagateDmaAccess;

typedef struct DmagateDmaLog {
    DmagateDmaAccess *entry;    /* size entries, a ring indexed by seq */
    uint32_t size;              /* 0 until init: DMAGATE_DMALOG_ENTRIES */
    uint64_t next_seq;          /* seq of the next access (from 1) */
    uint64_t first_seq;         /* the oldest entry held */
    uint64_t lost;              /* entries the ring overwrote */
    uint64_t since;             /* the visit lists seq >= since only */
} DmagateDmaLog;

void dmagate_dmalog_init(DmagateDmaLog *log);
void dmagate_dmalog_free(DmagateDmaLog *log);

/*
 * Hold @size entries from now on; false if out of range. A log in use is
 * emptied (seq goes on).
 */
bool dmagate_dmalog_resize(DmagateDmaLog *log, uint32_t size);

/* Record one access (a no-op before init). */
void dmagate_dmalog_add(DmagateDmaLog *log, DmagateDmaKind kind, uint64_t addr,
                        uint32_t len, unsigned dir, bool ok, uint32_t index,
                        int64_t time_ns);

/* Accesses overwritten since the log began: the ring is full. */
uint64_t dmagate_dmalog_lost(const DmagateDmaLog *log);

/* The entries still held from log->since on, oldest first, as a QAPI list. */
bool dmagate_dmalog_visit(const DmagateDmaLog *log, Visitor *v,
                          const char *name, Error **errp);

#endif /* HW_DMAGATE_DMALOG_H */
