/*
 * dmagate: the DMA access log (see dmagate-dmalog.h)
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "dmagate-dmalog.h"

static const char *const kind_names[DMALOG_KIND_COUNT] = {
    [DMALOG_DESCRIPTOR] = "descriptor",
    [DMALOG_SG_LIST] = "sg-list",
    [DMALOG_DATA] = "data",
    [DMALOG_COMPLETION] = "completion",
    [DMALOG_INTERRUPT] = "interrupt",
};

static const char *const dir_names[] = {
    [DMALOG_READ] = "read",
    [DMALOG_WRITE] = "write",
    [DMALOG_READ | DMALOG_WRITE] = "read-write",
};

void dmagate_dmalog_init(DmagateDmaLog *log)
{
    if (!log->entry) {
        log->entry = g_new0(DmagateDmaAccess, DMAGATE_DMALOG_ENTRIES);
        log->next_seq = 1;
    }
}

void dmagate_dmalog_free(DmagateDmaLog *log)
{
    g_free(log->entry);
    log->entry = NULL;
}

void dmagate_dmalog_add(DmagateDmaLog *log, DmagateDmaKind kind, uint64_t addr,
                        uint32_t len, unsigned dir, bool ok, uint32_t index,
                        int64_t time_ns)
{
    DmagateDmaAccess *access;

    if (!log->entry) {
        return;
    }
    access = &log->entry[(log->next_seq - 1) % DMAGATE_DMALOG_ENTRIES];
    *access = (DmagateDmaAccess) {
        .seq = log->next_seq++,
        .addr = addr,
        .len = len,
        .index = index,
        .time_ns = time_ns,
        .kind = kind,
        .dir = dir,
        .ok = ok,
    };
}

uint64_t dmagate_dmalog_lost(const DmagateDmaLog *log)
{
    uint64_t made = log->next_seq ? log->next_seq - 1 : 0;

    return made > DMAGATE_DMALOG_ENTRIES ? made - DMAGATE_DMALOG_ENTRIES : 0;
}

static bool visit_access(Visitor *v, const DmagateDmaAccess *access,
                         Error **errp)
{
    uint64_t seq = access->seq, addr = access->addr;
    uint32_t len = access->len;
    int64_t time_ns = access->time_ns;
    char *kind = (char *)kind_names[access->kind];
    char *dir = (char *)dir_names[access->dir];
    bool ok = access->ok;
    bool done;

    if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
        return false;
    }
    done = visit_type_uint64(v, "seq", &seq, errp) &&
           visit_type_str(v, "kind", &kind, errp) &&
           visit_type_str(v, "dir", &dir, errp) &&
           visit_type_uint64(v, "addr", &addr, errp) &&
           visit_type_uint32(v, "len", &len, errp) &&
           visit_type_bool(v, "ok", &ok, errp) &&
           visit_type_int64(v, "time-ns", &time_ns, errp);
    if (done && access->index != DMALOG_NO_INDEX) {
        uint32_t index = access->index;

        done = visit_type_uint32(v, "sq-index", &index, errp);
    }
    done = done && visit_check_struct(v, errp);
    visit_end_struct(v, NULL);
    return done;
}

bool dmagate_dmalog_visit(const DmagateDmaLog *log, Visitor *v,
                          const char *name, Error **errp)
{
    uint64_t first = dmagate_dmalog_lost(log) + 1;
    bool done = true;

    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return false;
    }
    for (uint64_t seq = first; log->entry && seq < log->next_seq && done;
         seq++) {
        done = visit_access(v, &log->entry[(seq - 1) % DMAGATE_DMALOG_ENTRIES],
                            errp);
    }
    visit_end_list(v, NULL);
    return done;
}
