/* SPDX-License-Identifier: GPL-2.0-only WITH Linux-syscall-note OR MIT */
/*
 * dmagate: the ioctl ABI of /dev/dmagate<N> (docs/driver.md).
 *
 * Every structure starts with its size as the caller compiled it; the
 * driver accepts any size from the first version's up to a page, reads
 * only what the caller has, treats missing trailing fields as zero, and
 * refuses non-zero bytes it does not understand and sizes above a page
 * (E2BIG). Unknown flags: EINVAL. Reserved fields: must be zero (EINVAL).
 * Commands are decoded whole (direction, type, number, size): a structure
 * that grows gets a new command.
 */
#ifndef _UAPI_DMAGATE_H
#define _UAPI_DMAGATE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define DMAGATE_UAPI_VERSION	1

/* Operations (docs/device.md, section 4, defines what each computes). */
#define DMAGATE_XFER_FILL	1	/* device -> buffer: pattern from param */
#define DMAGATE_XFER_CHECKSUM	2	/* buffer -> device: CRC-32 */
#define DMAGATE_XFER_TRANSFORM	3	/* buffer -> device -> buffer: XOR param */

/* DMAGATE_IOC_INFO: what this driver and device offer. */
struct dmagate_info {
	__u32 size;		/* in: sizeof(struct dmagate_info) */
	__u32 version;		/* out: DMAGATE_UAPI_VERSION */
	__u64 max_buffer;	/* out: largest buffer a session may have */
	__u32 device_version;	/* out: the device's VERSION register */
	__u32 irq_mode;		/* out: DMAGATE_IRQ_MSIX, _MSI or _INTX */
};

#define DMAGATE_IRQ_MSIX	1
#define DMAGATE_IRQ_MSI		2
#define DMAGATE_IRQ_INTX	3

/* DMAGATE_IOC_ALLOC: give this open file its buffer (once). */
struct dmagate_alloc {
	__u32 size;		/* in: sizeof(struct dmagate_alloc) */
	__u32 flags;		/* in: 0 */
	__u64 length;		/* in: bytes, a multiple of the page size */
};

/*
 * DMAGATE_IOC_SUBMIT: hand [offset, offset + length) to the device.
 * Before it returns, every user mapping of those pages is gone; the call
 * does not wait for the transfer.
 */
struct dmagate_submit {
	__u32 size;		/* in: sizeof(struct dmagate_submit) */
	__u32 flags;		/* in: 0 */
	__u32 op;		/* in: DMAGATE_XFER_* */
	__u32 reserved;		/* in: 0 */
	__u64 offset;		/* in: page aligned, within the buffer */
	__u64 length;		/* in: bytes, > 0; whole pages are revoked */
	__u64 param;		/* in: FILL seed, TRANSFORM key, 0 */
	__u64 seq;		/* out: this transfer's sequence number */
};

/* What read() returns, one record per finished transfer, in order. */
struct dmagate_completion {
	__u64 seq;		/* the submit's sequence number */
	__s32 error;		/* 0, -EIO, -ETIMEDOUT (watchdog) or -ENODEV */
	__u32 device_status;	/* the completion record's status code */
	__u64 bytes;		/* bytes the device processed */
	__u32 crc;		/* CRC-32 the device computed */
	__u32 reserved;
	__u64 device_time_ns;	/* the device's clock at completion */
};

/* DMAGATE_IOC_WAIT: wait for a transfer to finish and take its record. */
struct dmagate_wait {
	__u32 size;		/* in: sizeof(struct dmagate_wait) */
	__u32 flags;		/* in: 0 */
	__u64 seq;		/* in: the transfer, 0 for the oldest unread one */
	__s64 timeout_ns;	/* in: < 0 waits without limit */
	struct dmagate_completion completion;	/* out */
};

#define DMAGATE_IOC_MAGIC	'G'
#define DMAGATE_IOC_INFO	_IOWR(DMAGATE_IOC_MAGIC, 0x00, struct dmagate_info)
#define DMAGATE_IOC_ALLOC	_IOW(DMAGATE_IOC_MAGIC, 0x01, struct dmagate_alloc)
#define DMAGATE_IOC_SUBMIT	_IOWR(DMAGATE_IOC_MAGIC, 0x02, struct dmagate_submit)
#define DMAGATE_IOC_WAIT	_IOWR(DMAGATE_IOC_MAGIC, 0x03, struct dmagate_wait)

#endif /* _UAPI_DMAGATE_H */
