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
        if (!log->size) {
            log->size = DMAGATE_DMALOG_ENTRIES;
        }
        log->entry = g_new0(DmagateDmaAccess, log->size);
        log->next_seq = 1;
        log->first_seq = 1;
    }
}

bool dmagate_dmalog_resize(DmagateDmaLog *log, uint32_t size)
{
    if (size < DMAGATE_DMALOG_MIN_ENTRIES ||
        size > DMAGATE_DMALOG_MAX_ENTRIES) {
        return false;
    }
    log->size = size;
    if (!log->entry) {
        return true;    /* init allocates it */
    }
    /* In use: an empty ring of the new size. */
    g_free(log->entry);
    log->entry = g_new0(DmagateDmaAccess, size);
    log->first_seq = log->next_seq;
    return true;
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
    if (log->next_seq - log->first_seq == log->size) {
        log->first_seq++;
        log->lost++;
    }
    access = &log->entry[log->next_seq % log->size];
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
    return log->lost;
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
    uint64_t first = MAX(log->first_seq, log->since);
    bool done = true;

    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return false;
    }
    for (uint64_t seq = first; log->entry && seq < log->next_seq && done;
         seq++) {
        done = visit_access(v, &log->entry[seq % log->size], errp);
    }
    visit_end_list(v, NULL);
    return done;
}
