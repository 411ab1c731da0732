/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * dmagate's ownership record (docs/driver.md, "Ownership record"): every
 * piece of memory the driver gives the device to address, and every range
 * of a session's buffer that changes hands, stamped with the device's own
 * clock (the TIME register) so that it can be laid against the device's
 * DMA access log.
 *
 * epoch is drawn at module load, seq counts the module's events: together
 * they order the record across CPUs and show where a reload cut it.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM dmagate

#if !defined(_DMAGATE_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _DMAGATE_TRACE_H

#include <linux/tracepoint.h>

/* Fixed arrays rather than __string(): __assign_str() changed in 6.10. */
#define DMAGATE_TRACE_DEV_LEN	16	/* "0000:00:03.0" */
#define DMAGATE_TRACE_WHAT_LEN	8

DECLARE_EVENT_CLASS(dmagate_region,
	TP_PROTO(u32 epoch, u64 seq, const char *dev, const char *what, u32 sess,
		 u64 xfer, u64 offset, u64 bus, u64 len, u64 time_ns),
	TP_ARGS(epoch, seq, dev, what, sess, xfer, offset, bus, len, time_ns),
	TP_STRUCT__entry(
		__field(u32, epoch)
		__field(u64, seq)
		__array(char, dev, DMAGATE_TRACE_DEV_LEN)
		__array(char, what, DMAGATE_TRACE_WHAT_LEN)
		__field(u32, sess)
		__field(u64, xfer)
		__field(u64, offset)
		__field(u64, bus)
		__field(u64, len)
		__field(u64, time_ns)
	),
	TP_fast_assign(
		__entry->epoch = epoch;
		__entry->seq = seq;
		strscpy(__entry->dev, dev, DMAGATE_TRACE_DEV_LEN);
		strscpy(__entry->what, what, DMAGATE_TRACE_WHAT_LEN);
		__entry->sess = sess;
		__entry->xfer = xfer;
		__entry->offset = offset;
		__entry->bus = bus;
		__entry->len = len;
		__entry->time_ns = time_ns;
	),
	TP_printk("epoch=%08x seq=%llu dev=%s what=%s sess=%u xfer=%llu offset=0x%llx bus=0x%llx len=0x%llx time=%llu",
		  __entry->epoch, __entry->seq, __entry->dev, __entry->what,
		  __entry->sess, __entry->xfer, __entry->offset, __entry->bus,
		  __entry->len, __entry->time_ns)
);

/* The device may address [bus, bus + len) from time_ns on. */
DEFINE_EVENT(dmagate_region, dmagate_dma_map,
	TP_PROTO(u32 epoch, u64 seq, const char *dev, const char *what, u32 sess,
		 u64 xfer, u64 offset, u64 bus, u64 len, u64 time_ns),
	TP_ARGS(epoch, seq, dev, what, sess, xfer, offset, bus, len, time_ns)
);

/* ... and no longer after time_ns. */
DEFINE_EVENT(dmagate_region, dmagate_dma_unmap,
	TP_PROTO(u32 epoch, u64 seq, const char *dev, const char *what, u32 sess,
		 u64 xfer, u64 offset, u64 bus, u64 len, u64 time_ns),
	TP_ARGS(epoch, seq, dev, what, sess, xfer, offset, bus, len, time_ns)
);

/*
 * Buffer bytes [offset, offset + len) of session sess (whole pages) went
 * to the device (before the doorbell) or back to the program (before a
 * touch can map them) at time_ns.
 */
TRACE_EVENT(dmagate_owner,
	TP_PROTO(u32 epoch, u64 seq, const char *dev, u32 sess, u64 xfer,
		 u64 offset, u64 len, bool to_device, u64 time_ns),
	TP_ARGS(epoch, seq, dev, sess, xfer, offset, len, to_device, time_ns),
	TP_STRUCT__entry(
		__field(u32, epoch)
		__field(u64, seq)
		__array(char, dev, DMAGATE_TRACE_DEV_LEN)
		__field(u32, sess)
		__field(u64, xfer)
		__field(u64, offset)
		__field(u64, len)
		__field(bool, to_device)
		__field(u64, time_ns)
	),
	TP_fast_assign(
		__entry->epoch = epoch;
		__entry->seq = seq;
		strscpy(__entry->dev, dev, DMAGATE_TRACE_DEV_LEN);
		__entry->sess = sess;
		__entry->xfer = xfer;
		__entry->offset = offset;
		__entry->len = len;
		__entry->to_device = to_device;
		__entry->time_ns = time_ns;
	),
	TP_printk("epoch=%08x seq=%llu dev=%s sess=%u xfer=%llu offset=0x%llx len=0x%llx to=%s time=%llu",
		  __entry->epoch, __entry->seq, __entry->dev, __entry->sess,
		  __entry->xfer, __entry->offset, __entry->len,
		  __entry->to_device ? "device" : "program", __entry->time_ns)
);

#endif /* _DMAGATE_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE dmagate_trace
#include <trace/define_trace.h>
