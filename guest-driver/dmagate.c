// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmagate: driver for the dmagate DMA test device (docs/device.md).
 *
 * Each open() of /dev/dmagate<N> is a session with one buffer that the
 * program maps.  DMAGATE_IOC_SUBMIT takes the pages of a range away from
 * every user mapping of the session and hands them to the device; the
 * completion interrupt hands them back, and the next touch maps them again.
 * docs/driver.md is the contract, include/uapi/dmagate.h the ABI.
 *
 * Ownership.  A page of a session's buffer belongs to the device while it
 * lies in a transfer on sess->inflight, to the program otherwise.  Every
 * mapping of the session (several mmaps, split VMAs, forked children) links
 * into one address_space, that of an inode the session owns, so taking a
 * range away is one unmap_mapping_range().  mmap() installs nothing: the
 * fault handler maps the program's pages (VM_PFNMAP, so nothing can pin
 * them) or answers SIGBUS.
 *
 * Locking
 * -------
 *   dev->sessions_lock  mutex: dev->sessions, dev->leaked, dev->gone
 *   sess->lock          mutex: the session's buffer, sess->inflight,
 *                       sess->done, sess->gone, sess->next_seq
 *   dev->hw_lock        mutex: registers, rings, dev->posted, dev->hw_dead
 *   dev->time_lock      spinlock: the TIME register's LO/HI latch
 *   dmagate_wedged_lock mutex: dmagate_wedged (innermost, taken alone)
 *
 * Order: mmap_lock (or the VMA lock; held by the core around a fault, and
 *   tried for read by read() and WAIT to map a record's pages back)
 *   -> dev->sessions_lock -> sess->lock -> dev->hw_lock
 *   -> i_mmap_rwsem and page-table locks (inside unmap_mapping_range(),
 *      vmf_insert_pfn() and apply_to_page_range()).
 *
 * Nothing copies to or from user space, or takes mmap_lock, while holding
 * sess->lock or dev->hw_lock: such a copy may fault on the session's own
 * mapping, and the fault handler takes sess->lock.  The interrupt thread
 * and the watchdog take finished transfers off dev->posted under
 * dev->hw_lock, drop it, and then take each transfer's sess->lock to give
 * its pages back.  A transfer's pages are synced for the CPU and given back
 * only once the device has reported it, or a reset has confirmed that the
 * device stopped; a session's buffer is freed only when none of its
 * transfers is in flight.
 *
 * A device that a reset does not stop is "wedged": it may write anything
 * it was given, for good.  Its transfers' pages stay revoked, its buffers,
 * rings and SG lists are never freed, and the module stays loaded (the
 * session inodes live on its filesystem).  Waiters get EIO.  Wedged
 * devices stay on dmagate_wedged: what they hold is leaked on purpose, and
 * stays reachable (kmemleak does not report it).  At remove its mappings
 * are unmapped but nothing is freed: the DMA API's books close, and behind
 * an IOMMU the device is fenced off pages it still holds.
 *
 * Every ownership change, and every range of memory handed to the device
 * to address, is a trace event (dmagate_trace.h) stamped with the device's
 * clock, so that a test can check the device's own DMA log against it.
 */

#include <linux/debugfs.h>
#include <linux/dma-mapping.h>
#include <linux/huge_mm.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/iopoll.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mount.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/pseudo_fs.h>
#include <linux/random.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/trace.h>
#include <linux/trace_events.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>

#include "dmagate_hw.h"
#include "uapi/dmagate.h"

#define CREATE_TRACE_POINTS
#include "dmagate_trace.h"

#define DRV_NAME		"dmagate"
#define DMAGATE_FS_MAGIC	0x444d4147	/* "DMAG" */

/* Ring sizes: one SG list of DMAGATE_MAX_SEGMENTS entries per SQ slot. */
#define DMAGATE_SQ_ENTRIES	32
/* Room for every slot's completion plus injected duplicates. */
#define DMAGATE_CQ_ENTRIES	(2 * DMAGATE_SQ_ENTRIES)
#define DMAGATE_SGL_BYTES	(DMAGATE_MAX_SEGMENTS * DMAGATE_SG_SIZE)
/* Buffers are made of chunks of up to 64 KiB: few SG entries, easy pages. */
#define DMAGATE_CHUNK_ORDER	4
/*
 * Where the kernel maps PFNs with PMD entries (6.12 on), a buffer of whole
 * 2 MiB is made of 2 MiB chunks if memory allows: one fault and one entry
 * re-grant 2 MiB.
 */
#ifdef CONFIG_ARCH_SUPPORTS_PMD_PFNMAP
#define DMAGATE_HUGE_ORDER	PMD_ORDER
#else
#define DMAGATE_HUGE_ORDER	0
#endif
/* Pages one fault maps at most (2 MiB): bounded time under sess->lock. */
#define DMAGATE_FAULT_PAGES	512
/*
 * The watchdog's limit.  close() waits uninterruptibly for the device, for
 * up to about this long: well inside the hung-task detector's 120 s.
 */
#define DMAGATE_MAX_TIMEOUT_MS	60000
#define DMAGATE_TRACE_INSTANCE	"dmagate"

#ifdef DMAGATE_HAVE_PFN_T	/* before 6.17 */
#include <linux/pfn_t.h>
#define dmagate_pmd_pfn(pfn)	pfn_to_pfn_t(pfn)
#else
#define dmagate_pmd_pfn(pfn)	(pfn)
#endif

#ifndef kzalloc_obj	/* 7.x: typed allocators, which its checkpatch asks for */
#define kzalloc_obj(obj, gfp)	kzalloc(sizeof(obj), gfp)
#endif

#ifndef PCI_IRQ_INTX
#define PCI_IRQ_INTX		PCI_IRQ_LEGACY
#endif

static unsigned long max_buffer = 64UL << 20;
module_param(max_buffer, ulong, 0444);
MODULE_PARM_DESC(max_buffer, "largest buffer of one session, bytes (64 MiB .. 256 MiB)");

static int dmagate_set_timeout(const char *val, const struct kernel_param *kp)
{
	unsigned int ms;
	int ret;

	ret = kstrtouint(val, 0, &ms);
	if (ret)
		return ret;
	if (!ms || ms > DMAGATE_MAX_TIMEOUT_MS)
		return -EINVAL;
	*(unsigned int *)kp->arg = ms;
	return 0;
}

static const struct kernel_param_ops dmagate_timeout_ops = {
	.set = dmagate_set_timeout,
	.get = param_get_uint,
};

static unsigned int timeout_ms = 5000;
module_param_cb(timeout_ms, &dmagate_timeout_ops, &timeout_ms, 0644);
MODULE_PARM_DESC(timeout_ms, "watchdog: reset the device when a transfer takes longer (1 .. 60000 ms)");

static char *irq_mode = "auto";
module_param(irq_mode, charp, 0444);
MODULE_PARM_DESC(irq_mode, "interrupts to use: auto (MSI-X, MSI, INTx), msix, msi or intx");

static char *dma_map = "session";
module_param(dma_map, charp, 0444);
MODULE_PARM_DESC(dma_map, "session (map a buffer once) or transfer (map at SUBMIT, unmap at completion)");

static bool map_on_wait = true;
module_param(map_on_wait, bool, 0644);
MODULE_PARM_DESC(map_on_wait, "read() and WAIT map a finished transfer's pages into the caller's mappings");

static bool ownership_trace = true;
module_param(ownership_trace, bool, 0444);
MODULE_PARM_DESC(ownership_trace, "record ownership in the trace instance " DMAGATE_TRACE_INSTANCE);

static struct vfsmount *dmagate_mnt;
static DEFINE_IDA(dmagate_ida);
static struct workqueue_struct *dmagate_wq;
static struct trace_array *dmagate_trace;
static bool dmagate_map_per_xfer;
static u32 dmagate_epoch;
static atomic64_t dmagate_trace_seq = ATOMIC64_INIT(0);
static atomic_t dmagate_session_ids = ATOMIC_INIT(0);
static LIST_HEAD(dmagate_wedged);
static DEFINE_MUTEX(dmagate_wedged_lock);
static struct dentry *dmagate_debugfs;	/* /sys/kernel/debug/dmagate/ */
/*
 * Benchmarks only (debugfs unsafe_no_revoke, off by default): SUBMIT
 * leaves the program its pages and a fault maps device-owned pages, so
 * that a program can touch memory the device is writing.  The floor the
 * protocol's cost is measured against, and the base of the program-side
 * alternative (mprotect around each transfer).
 */
static bool dmagate_unsafe_no_revoke;

struct dmagate_stats {
	atomic64_t submits;
	atomic64_t completions;
	atomic64_t errors;
	atomic64_t timeouts;
	atomic64_t revocations;
	atomic64_t faults;
	atomic64_t sigbus;
};

/*
 * Where the last SUBMIT's cycle went, for benchmarks (debugfs last_cycle):
 * CLOCK_MONOTONIC stamps and the time faults took since that SUBMIT.
 */
struct dmagate_cycle_stamps {
	atomic64_t zap_ns;		/* unmap_mapping_range() in SUBMIT */
	atomic64_t doorbell_ns;		/* the doorbell write */
	atomic64_t irq_ns;		/* the last hard interrupt */
	atomic64_t finish_ns;		/* the waiters woken */
	atomic64_t fault_ns;		/* in the fault handler */
	atomic64_t map_ns;		/* of that, inserting page-table entries */
	atomic64_t faults;
	atomic64_t pmds;		/* of those, mapped with one PMD entry */
	atomic64_t wait_map_ns;		/* read() or WAIT mapping the pages back */
};

struct dmagate_dev {
	struct kref ref;
	struct pci_dev *pdev;
	void __iomem *regs;
	struct miscdevice misc;
	char name[20];
	int id;
	u32 irq_mode;			/* DMAGATE_IRQ_* */
	int nvecs;
	u32 version;

	struct mutex sessions_lock;	/* see "Locking" above */
	struct list_head sessions;
	struct list_head leaked;	/* sessions closed while the device was wedged */
	struct dentry *debugfs;		/* /sys/kernel/debug/dmagate/dmagate<N>/ */
	struct dmagate_cycle_stamps cycle;
	bool gone;

	struct mutex hw_lock;		/* see "Locking" above */
	bool hw_dead;			/* no register or ring access any more */
	bool halted;			/* the device reported a ring error */
	bool wedged;			/* a reset did not stop it: never free */
	bool failed;			/* it stopped working: waiters get EIO */
	spinlock_t time_lock;		/* see "Locking" above */
	struct list_head wedged_node;	/* on dmagate_wedged */
	struct work_struct remove_work;	/* the device fell off the bus */
	void *sq;
	dma_addr_t sq_dma;
	void *cq;
	dma_addr_t cq_dma;
	void *sgl[DMAGATE_SQ_ENTRIES];
	dma_addr_t sgl_dma[DMAGATE_SQ_ENTRIES];
	u32 sq_tail;
	u32 cq_head;
	bool cq_phase;
	struct list_head posted;	/* transfers given to the device, in order */
	unsigned int nposted;
	u32 next_tag;
	struct delayed_work watchdog;

	struct dmagate_stats stats;
};

struct dmagate_session {
	struct kref ref;		/* the file's, and one per transfer in flight */
	struct dmagate_dev *dev;
	struct list_head node;		/* on dev->sessions */
	struct inode *inode;		/* its i_mapping holds every mapping */
	struct mutex lock;
	wait_queue_head_t wq;
	atomic_t events;		/* bumped on every completion and on removal */
	atomic_t ninflight;		/* entries on inflight, for lockless waits */
	bool gone;
	u32 id;				/* names the session in the trace */

	struct page **chunks;
	dma_addr_t *chunk_dma;
	unsigned int nchunks;
	unsigned int chunk_order;
	bool dma_mapped;
	u64 length;
	pgoff_t npages;

	u64 next_seq;
	struct list_head inflight;	/* transfers the device owns */
	struct list_head done;		/* finished, record not read yet */
};

/* With dma_map=transfer: one DMA mapping of the transfer's, in a chunk. */
struct dmagate_xfer_map {
	dma_addr_t addr;
	unsigned int idx;
	u32 len;
	u64 in;
};

struct dmagate_xfer {
	struct list_head node;		/* on sess->inflight, then sess->done */
	struct list_head posted;	/* on dev->posted, then a local list */
	struct dmagate_session *sess;
	u32 tag;
	u32 slot;			/* its SQ slot */
	u32 op;
	enum dma_data_direction dir;
	u64 offset;
	u64 length;
	pgoff_t first;			/* pages [first, last) are revoked */
	pgoff_t last;
	unsigned long deadline;
	struct dmagate_xfer_map *maps;	/* dma_map=transfer only */
	unsigned int nmaps;
	struct dmagate_completion rec;
};

static void dmagate_buffer_free(struct dmagate_session *sess);

static void dmagate_dev_release(struct kref *ref)
{
	struct dmagate_dev *dev = container_of(ref, struct dmagate_dev, ref);

	pci_dev_put(dev->pdev);
	kfree(dev);
}

static void dmagate_dev_put(struct dmagate_dev *dev)
{
	kref_put(&dev->ref, dmagate_dev_release);
}

static struct device *dmagate_dma_dev(struct dmagate_dev *dev)
{
	return &dev->pdev->dev;
}

/* ---- The ownership record (dmagate_trace.h) ---------------------------- */

/*
 * The device's clock: reading TIME_LO latches TIME_HI (docs/device.md).
 * All ones once the device is off the bus.  Only called while bound.
 */
static u64 dmagate_device_time(struct dmagate_dev *dev)
{
	unsigned long flags;
	u32 lo, hi;

	spin_lock_irqsave(&dev->time_lock, flags);
	lo = readl(dev->regs + DMAGATE_REG_TIME_LO);
	hi = readl(dev->regs + DMAGATE_REG_TIME_HI);
	spin_unlock_irqrestore(&dev->time_lock, flags);
	return (u64)hi << 32 | lo;
}

static u64 dmagate_trace_next(void)
{
	return atomic64_inc_return(&dmagate_trace_seq);
}

/* The device may address [bus, bus + len) from now on (@map) or no more. */
static void dmagate_trace_region(struct dmagate_dev *dev, bool map, const char *what,
				 u32 sess, u64 xfer, u64 offset, dma_addr_t bus, u64 len)
{
	const char *name = dev_name(&dev->pdev->dev);

	if (map && trace_dmagate_dma_map_enabled())
		trace_dmagate_dma_map(dmagate_epoch, dmagate_trace_next(), name, what,
				      sess, xfer, offset, bus, len, dmagate_device_time(dev));
	else if (!map && trace_dmagate_dma_unmap_enabled())
		trace_dmagate_dma_unmap(dmagate_epoch, dmagate_trace_next(), name, what,
					sess, xfer, offset, bus, len, dmagate_device_time(dev));
}

/* The transfer's pages go to the device, or back to the program. */
static void dmagate_trace_owner(struct dmagate_xfer *xfer, bool to_device)
{
	struct dmagate_session *sess = xfer->sess;
	struct dmagate_dev *dev = sess->dev;

	if (trace_dmagate_owner_enabled())
		trace_dmagate_owner(dmagate_epoch, dmagate_trace_next(),
				    dev_name(&dev->pdev->dev), sess->id, xfer->rec.seq,
				    (u64)xfer->first << PAGE_SHIFT,
				    (u64)(xfer->last - xfer->first) << PAGE_SHIFT,
				    to_device, dmagate_device_time(dev));
}

/* The file is closed and no transfer holds the buffer any more. */
static void dmagate_session_release(struct kref *ref)
{
	struct dmagate_session *sess = container_of(ref, struct dmagate_session, ref);
	struct dmagate_xfer *xfer, *tmp;

	list_for_each_entry_safe(xfer, tmp, &sess->done, node) {
		list_del(&xfer->node);
		kfree(xfer);
	}
	mutex_lock(&sess->lock);
	dmagate_buffer_free(sess);
	mutex_unlock(&sess->lock);
	iput(sess->inode);
	dmagate_dev_put(sess->dev);
	kfree(sess);
}

static void dmagate_session_put(struct dmagate_session *sess)
{
	kref_put(&sess->ref, dmagate_session_release);
}

/* ---- The hardware: rings, reset, posting, reaping ---------------------- */

/* Ring fields are naturally aligned little-endian words (docs/device.md). */
static void dmagate_put_le32(void *base, unsigned int off, u32 val)
{
	*(__le32 *)(base + off) = cpu_to_le32(val);
}

static void dmagate_put_le64(void *base, unsigned int off, u64 val)
{
	*(__le64 *)(base + off) = cpu_to_le64(val);
}

static u32 dmagate_get_le32(const void *base, unsigned int off)
{
	return le32_to_cpu(*(const __le32 *)(base + off));
}

static void dmagate_write_ring_base(struct dmagate_dev *dev, u32 lo_reg, dma_addr_t base)
{
	writel(lower_32_bits(base), dev->regs + lo_reg);
	writel(upper_32_bits(base), dev->regs + lo_reg + 4);
}

/*
 * A soft reset abandons whatever the device was doing.  Returns 0 once the
 * device confirms it has stopped (STATUS reads 0), or reads all ones
 * because it is no longer there to write anything.
 */
static int dmagate_hw_reset(struct dmagate_dev *dev)
{
	u32 status;
	int ret;

	writel(DMAGATE_CTRL_RESET, dev->regs + DMAGATE_REG_CTRL);
	ret = readl_poll_timeout(dev->regs + DMAGATE_REG_STATUS, status,
				 status == 0 || status == U32_MAX, 10, 100000);
	if (!ret && status == U32_MAX && pci_device_is_present(dev->pdev))
		ret = -EIO;	/* there, but not answering: not proof it stopped */
	return ret;
}

/* All ones from BAR0 and from config space: it fell off the bus. */
static bool dmagate_hw_gone(struct dmagate_dev *dev)
{
	return readl(dev->regs + DMAGATE_REG_STATUS) == U32_MAX &&
	       !pci_device_is_present(dev->pdev);
}

/*
 * A reset did not stop the device: it may write whatever it was given, for
 * good.  Nothing it was given is freed, and the module stays (the leaked
 * sessions' inodes live on its filesystem).  hw_lock held.
 */
static void dmagate_mark_wedged(struct dmagate_dev *dev)
{
	lockdep_assert_held(&dev->hw_lock);
	dev->hw_dead = true;
	if (dev->wedged)
		return;
	__module_get(THIS_MODULE);
	kref_get(&dev->ref);
	mutex_lock(&dmagate_wedged_lock);
	list_add_tail(&dev->wedged_node, &dmagate_wedged);
	mutex_unlock(&dmagate_wedged_lock);
	WRITE_ONCE(dev->failed, true);
	WRITE_ONCE(dev->wedged, true);
}

/* Program the rings and enable; the device must be reset. hw_lock held. */
static int dmagate_hw_start(struct dmagate_dev *dev)
{
	u32 status;

	memset(dev->cq, 0, DMAGATE_CQ_ENTRIES * DMAGATE_CPL_SIZE);
	dma_sync_single_for_device(dmagate_dma_dev(dev), dev->cq_dma,
				   DMAGATE_CQ_ENTRIES * DMAGATE_CPL_SIZE, DMA_TO_DEVICE);
	dev->sq_tail = 0;
	dev->cq_head = 0;
	dev->cq_phase = true;
	dev->halted = false;
	dmagate_write_ring_base(dev, DMAGATE_REG_SQ_BASE_LO, dev->sq_dma);
	writel(DMAGATE_SQ_ENTRIES, dev->regs + DMAGATE_REG_SQ_SIZE);
	dmagate_write_ring_base(dev, DMAGATE_REG_CQ_BASE_LO, dev->cq_dma);
	writel(DMAGATE_CQ_ENTRIES, dev->regs + DMAGATE_REG_CQ_SIZE);
	writel(0, dev->regs + DMAGATE_REG_INT_MASK);
	writel(DMAGATE_CTRL_ENABLE, dev->regs + DMAGATE_REG_CTRL);
	status = readl(dev->regs + DMAGATE_REG_STATUS);
	if (!(status & DMAGATE_STATUS_ENABLED)) {
		dev_err(&dev->pdev->dev, "device refused the rings: status 0x%x, error %u\n",
			status, readl(dev->regs + DMAGATE_REG_ERROR));
		return -EIO;
	}
	return 0;
}

static void dmagate_watchdog_arm(struct dmagate_dev *dev)
{
	struct dmagate_xfer *oldest;
	long delay;

	lockdep_assert_held(&dev->hw_lock);
	oldest = list_first_entry_or_null(&dev->posted, struct dmagate_xfer, posted);
	if (!oldest) {
		cancel_delayed_work(&dev->watchdog);
		return;
	}
	delay = (long)(oldest->deadline - jiffies);
	mod_delayed_work(system_wq, &dev->watchdog, dev->halted ? 0 : max(delay, 0L));
}

/* A piece of the buffer inside one chunk: chunk @idx, bytes [in, in + len). */
struct dmagate_span {
	unsigned int idx;
	u64 in;
	u64 len;
};

/* Step through bytes [*pos, end) of the buffer chunk by chunk. */
static bool dmagate_next_span(const struct dmagate_session *sess, u64 *pos, u64 end,
			      struct dmagate_span *span)
{
	u64 chunk_bytes = PAGE_SIZE << sess->chunk_order;

	if (*pos >= end)
		return false;
	span->idx = *pos >> (PAGE_SHIFT + sess->chunk_order);
	span->in = *pos & (chunk_bytes - 1);
	span->len = min(end - *pos, chunk_bytes - span->in);
	*pos += span->len;
	return true;
}

static void dmagate_sync(struct dmagate_xfer *xfer, bool for_device)
{
	struct dmagate_session *sess = xfer->sess;
	struct device *dma_dev = dmagate_dma_dev(sess->dev);
	u64 pos = xfer->offset, end = xfer->offset + xfer->length;
	struct dmagate_span span;

	while (dmagate_next_span(sess, &pos, end, &span)) {
		if (for_device)
			dma_sync_single_range_for_device(dma_dev, sess->chunk_dma[span.idx],
							 span.in, span.len, xfer->dir);
		else
			dma_sync_single_range_for_cpu(dma_dev, sess->chunk_dma[span.idx],
						      span.in, span.len, xfer->dir);
	}
}

/* The bus address of the transfer's @i-th span. */
static dma_addr_t dmagate_span_bus(struct dmagate_xfer *xfer, unsigned int i,
				   const struct dmagate_span *span)
{
	if (xfer->maps)
		return xfer->maps[i].addr;
	return xfer->sess->chunk_dma[span->idx] + span->in;
}

/* Write the transfer's SG list into @sgl; returns the entry count. */
static u32 dmagate_build_sgl(struct dmagate_xfer *xfer, void *sgl)
{
	struct dmagate_session *sess = xfer->sess;
	u64 pos = xfer->offset, end = xfer->offset + xfer->length;
	struct dmagate_span span;
	dma_addr_t addr, next = 0;
	void *entry = NULL;
	unsigned int i = 0;
	u32 count = 0;

	while (dmagate_next_span(sess, &pos, end, &span)) {
		addr = dmagate_span_bus(xfer, i++, &span);
		if (entry && addr == next) {
			/* Contiguous with the previous segment: grow it. */
			dmagate_put_le32(entry, DMAGATE_SG_LEN,
					 dmagate_get_le32(entry, DMAGATE_SG_LEN) + span.len);
		} else {
			entry = sgl + count++ * DMAGATE_SG_SIZE;
			dmagate_put_le64(entry, DMAGATE_SG_ADDR, addr);
			dmagate_put_le32(entry, DMAGATE_SG_LEN, span.len);
			dmagate_put_le32(entry, DMAGATE_SG_RESERVED, 0);
		}
		next = addr + span.len;
	}
	return count;
}

static const u8 dmagate_opcodes[] = {
	[DMAGATE_XFER_FILL] = DMAGATE_OP_FILL,
	[DMAGATE_XFER_CHECKSUM] = DMAGATE_OP_CHECKSUM,
	[DMAGATE_XFER_TRANSFORM] = DMAGATE_OP_TRANSFORM,
};

/* Fill the next SQ slot with @xfer and ring the doorbell. hw_lock held. */
static void dmagate_hw_post(struct dmagate_dev *dev, struct dmagate_xfer *xfer,
			    u64 param)
{
	struct device *ddev = dmagate_dma_dev(dev);
	u32 slot = dev->sq_tail;
	void *desc = dev->sq + slot * DMAGATE_DESC_SIZE;
	u32 count = dmagate_build_sgl(xfer, dev->sgl[slot]);

	xfer->tag = dev->next_tag++;
	xfer->slot = slot;
	memset(desc, 0, DMAGATE_DESC_SIZE);
	*(u8 *)(desc + DMAGATE_DESC_OPCODE) = dmagate_opcodes[xfer->op];
	*(u8 *)(desc + DMAGATE_DESC_FLAGS) = DMAGATE_DESC_F_INTERRUPT;
	dmagate_put_le32(desc, DMAGATE_DESC_TAG, xfer->tag);
	dmagate_put_le64(desc, DMAGATE_DESC_SG_ADDR, dev->sgl_dma[slot]);
	dmagate_put_le32(desc, DMAGATE_DESC_SG_COUNT, count);
	dmagate_put_le32(desc, DMAGATE_DESC_LENGTH, xfer->length);
	dmagate_put_le64(desc, DMAGATE_DESC_PARAM, param);

	if (count)
		dma_sync_single_for_device(ddev, dev->sgl_dma[slot], count * DMAGATE_SG_SIZE,
					   DMA_TO_DEVICE);
	dma_sync_single_range_for_device(ddev, dev->sq_dma, slot * DMAGATE_DESC_SIZE,
					 DMAGATE_DESC_SIZE, DMA_TO_DEVICE);

	xfer->deadline = jiffies + msecs_to_jiffies(max(READ_ONCE(timeout_ms), 1U));
	list_add_tail(&xfer->posted, &dev->posted);
	dev->nposted++;
	dev->sq_tail = (slot + 1) % DMAGATE_SQ_ENTRIES;
	/* writel() orders the synced descriptor and SG list before the doorbell. */
	atomic64_set(&dev->cycle.doorbell_ns, ktime_get_ns());
	writel(dev->sq_tail, dev->regs + DMAGATE_REG_SQ_TAIL);
	dmagate_watchdog_arm(dev);
}

static int dmagate_status_errno(u16 status)
{
	return status == DMAGATE_ST_OK ? 0 : -EIO;
}

/*
 * The posted transfer a completion record is for: the one in the record's
 * SQ slot, if its tag is the record's.  Any order (a device may complete
 * out of order); a record that names another transfer's tag is no proof
 * that this one is done.
 */
static struct dmagate_xfer *dmagate_posted_find(struct dmagate_dev *dev, u32 tag, u32 slot)
{
	struct dmagate_xfer *xfer;

	list_for_each_entry(xfer, &dev->posted, posted)
		if (xfer->slot == slot)
			return xfer->tag == tag ? xfer : NULL;
	return NULL;
}

/* Move every completion the device has written onto @finished. hw_lock held. */
static void dmagate_hw_reap(struct dmagate_dev *dev, struct list_head *finished)
{
	struct dmagate_xfer *xfer;
	bool moved = false;

	for (;;) {
		void *cpl = dev->cq + dev->cq_head * DMAGATE_CPL_SIZE;
		u32 tag, slot;
		u16 status, flags;

		dma_sync_single_range_for_cpu(dmagate_dma_dev(dev), dev->cq_dma,
					      dev->cq_head * DMAGATE_CPL_SIZE, DMAGATE_CPL_SIZE,
					      DMA_FROM_DEVICE);
		/* The device writes the ring behind our back. */
		flags = le16_to_cpu(READ_ONCE(*(__le16 *)(cpl + DMAGATE_CPL_FLAGS)));
		if (!!(flags & DMAGATE_CPL_F_PHASE) != dev->cq_phase)
			break;
		/* Read the record only after seeing its phase flip. */
		dma_rmb();
		tag = dmagate_get_le32(cpl, DMAGATE_CPL_TAG);
		slot = dmagate_get_le32(cpl, DMAGATE_CPL_SQ_INDEX);
		status = le16_to_cpu(*(__le16 *)(cpl + DMAGATE_CPL_STATUS));
		if (++dev->cq_head == DMAGATE_CQ_ENTRIES) {
			dev->cq_head = 0;
			dev->cq_phase = !dev->cq_phase;
		}
		moved = true;

		xfer = dmagate_posted_find(dev, tag, slot);
		if (!xfer) {
			/* A duplicate (its transfer is done) or a wrong tag. */
			dev_warn_ratelimited(&dev->pdev->dev,
					     "ignoring a completion for tag %u in slot %u (status %u)\n",
					     tag, slot, status);
			continue;
		}
		xfer->rec.device_status = status;
		xfer->rec.error = dmagate_status_errno(status);
		xfer->rec.bytes = dmagate_get_le32(cpl, DMAGATE_CPL_BYTES_DONE);
		xfer->rec.crc = dmagate_get_le32(cpl, DMAGATE_CPL_CRC);
		xfer->rec.device_time_ns = le64_to_cpu(*(__le64 *)(cpl + DMAGATE_CPL_TIMESTAMP));
		list_move_tail(&xfer->posted, finished);
		dev->nposted--;
	}
	if (moved)
		writel(dev->cq_head, dev->regs + DMAGATE_REG_CQ_HEAD);
}

/*
 * dma_map=transfer: map the transfer's pages for the device alone, one
 * mapping per span (no merging: a mapping ends where the transfer does).
 * sess->lock held.
 */
static int dmagate_xfer_map(struct dmagate_xfer *xfer)
{
	struct dmagate_session *sess = xfer->sess;
	struct device *dma_dev = dmagate_dma_dev(sess->dev);
	u64 pos = xfer->offset, end = xfer->offset + xfer->length;
	struct dmagate_xfer_map *map;
	struct dmagate_span span;
	unsigned int n = 0;

	while (dmagate_next_span(sess, &pos, end, &span))
		n++;
	xfer->maps = kcalloc(n, sizeof(*xfer->maps), GFP_KERNEL);
	if (!xfer->maps)
		return -ENOMEM;
	pos = xfer->offset;
	while (dmagate_next_span(sess, &pos, end, &span)) {
		map = &xfer->maps[xfer->nmaps];
		map->idx = span.idx;
		map->in = span.in;
		map->len = span.len;
		/*
		 * A chunk is one alloc_pages() block, never wider than a
		 * memory section, so its struct pages are contiguous (6.18
		 * removed nth_page() on that ground).
		 */
		map->addr = dma_map_page(dma_dev, sess->chunks[span.idx] +
					 (span.in >> PAGE_SHIFT),
					 offset_in_page(span.in), span.len, xfer->dir);
		if (dma_mapping_error(dma_dev, map->addr))
			return -ENOMEM;	/* the caller unmaps what was mapped */
		xfer->nmaps++;
		dmagate_trace_region(sess->dev, true, "buffer", sess->id, xfer->rec.seq,
				     ((u64)span.idx << (PAGE_SHIFT + sess->chunk_order)) + span.in,
				     map->addr, span.len);
	}
	return 0;
}

/*
 * Undo dmagate_xfer_map(): this syncs the pages for the CPU.  @leak: the
 * device is wedged, its pages stay (and their windows stay open in the
 * ownership record).  sess->lock held.
 */
static void dmagate_xfer_unmap(struct dmagate_xfer *xfer, bool leak)
{
	struct dmagate_session *sess = xfer->sess;
	struct device *dma_dev = dmagate_dma_dev(sess->dev);
	struct dmagate_xfer_map *map;

	while (xfer->nmaps) {
		map = &xfer->maps[--xfer->nmaps];
		dma_unmap_page(dma_dev, map->addr, map->len, xfer->dir);
		if (leak)
			continue;
		dmagate_trace_region(sess->dev, false, "buffer", sess->id, xfer->rec.seq,
				     ((u64)map->idx << (PAGE_SHIFT + sess->chunk_order)) + map->in,
				     map->addr, map->len);
	}
	kfree(xfer->maps);
	xfer->maps = NULL;
}

/* Give a finished transfer's pages back to the program, wake waiters. */
static void dmagate_xfer_finish(struct dmagate_xfer *xfer)
{
	struct dmagate_session *sess = xfer->sess;
	struct dmagate_stats *stats = &sess->dev->stats;
	int error = xfer->rec.error;

	mutex_lock(&sess->lock);
	if (xfer->maps)
		dmagate_xfer_unmap(xfer, false);
	else if (sess->dma_mapped)
		dmagate_sync(xfer, false);
	dmagate_trace_owner(xfer, false);
	/* From here a reader may take and free @xfer. */
	list_move_tail(&xfer->node, &sess->done);
	atomic_dec(&sess->ninflight);
	atomic_inc(&sess->events);
	mutex_unlock(&sess->lock);

	atomic64_inc(&stats->completions);
	if (error)
		atomic64_inc(&stats->errors);
	if (error == -ETIMEDOUT)
		atomic64_inc(&stats->timeouts);
	atomic64_set(&sess->dev->cycle.finish_ns, ktime_get_ns());
	wake_up_poll(&sess->wq, EPOLLIN | EPOLLRDNORM | (error ? EPOLLERR : 0));
	/* The transfer's reference: the session may go now. */
	dmagate_session_put(sess);
}

static void dmagate_finish_all(struct list_head *finished, int error)
{
	struct dmagate_xfer *xfer, *tmp;

	list_for_each_entry_safe(xfer, tmp, finished, posted) {
		list_del_init(&xfer->posted);
		if (error) {
			xfer->rec.error = error;
			xfer->rec.device_status = U32_MAX;
		}
		dmagate_xfer_finish(xfer);
	}
}

static irqreturn_t dmagate_irq(int irq, void *data)
{
	struct dmagate_dev *dev = data;
	u32 status = readl(dev->regs + DMAGATE_REG_INT_STATUS);

	atomic64_set(&dev->cycle.irq_ns, ktime_get_ns());
	if (!status || status == U32_MAX)
		return dev->irq_mode == DMAGATE_IRQ_INTX ? IRQ_NONE : IRQ_WAKE_THREAD;
	writel(status, dev->regs + DMAGATE_REG_INT_ACK);
	return IRQ_WAKE_THREAD;
}

/*
 * The device fell off the bus: detach as if it had been unplugged
 * (dmagate_remove() fails its transfers with ENODEV and hangs up on its
 * sessions).  hw_lock held.
 */
static void dmagate_fell_off(struct dmagate_dev *dev)
{
	lockdep_assert_held(&dev->hw_lock);
	if (dev->hw_dead)
		return;
	dev->hw_dead = true;
	dev_err(&dev->pdev->dev, "device reads all ones: off the bus, detaching\n");
	kref_get(&dev->ref);
	if (!queue_work(dmagate_wq, &dev->remove_work))
		dmagate_dev_put(dev);
}

static void dmagate_remove_work(struct work_struct *work)
{
	struct dmagate_dev *dev = container_of(work, struct dmagate_dev, remove_work);

	/* Unless it was unbound (and maybe bound again) meanwhile. */
	if (pci_get_drvdata(dev->pdev) == dev)
		device_release_driver(&dev->pdev->dev);
	dmagate_dev_put(dev);
}

static irqreturn_t dmagate_irq_thread(int irq, void *data)
{
	struct dmagate_dev *dev = data;
	LIST_HEAD(finished);
	u32 status;

	mutex_lock(&dev->hw_lock);
	if (dev->hw_dead) {
		mutex_unlock(&dev->hw_lock);
		return IRQ_HANDLED;
	}
	dmagate_hw_reap(dev, &finished);
	status = readl(dev->regs + DMAGATE_REG_STATUS);
	if (status == U32_MAX && dmagate_hw_gone(dev))
		dmagate_fell_off(dev);
	else if (status & DMAGATE_STATUS_HALTED)
		dev->halted = true;
	if (!dev->hw_dead)
		dmagate_watchdog_arm(dev);
	mutex_unlock(&dev->hw_lock);

	dmagate_finish_all(&finished, 0);
	return IRQ_HANDLED;
}

/* The device failed: every waiter of every session is to look again. */
static void dmagate_wake_sessions(struct dmagate_dev *dev)
{
	struct dmagate_session *sess;

	mutex_lock(&dev->sessions_lock);
	list_for_each_entry(sess, &dev->sessions, node) {
		mutex_lock(&sess->lock);
		atomic_inc(&sess->events);
		mutex_unlock(&sess->lock);
		wake_up_poll(&sess->wq, EPOLLERR | EPOLLHUP);
	}
	mutex_unlock(&dev->sessions_lock);
}

/*
 * The oldest transfer is overdue (a lost interrupt, a stalled device) or
 * the device halted: reset it, and only once it confirms it stopped give
 * every transfer it held back, failed.
 */
static void dmagate_watchdog(struct work_struct *work)
{
	struct dmagate_dev *dev = container_of(to_delayed_work(work),
					       struct dmagate_dev, watchdog);
	struct dmagate_xfer *oldest;
	LIST_HEAD(finished);
	bool restarted;
	int error;

	mutex_lock(&dev->hw_lock);
	oldest = list_first_entry_or_null(&dev->posted, struct dmagate_xfer, posted);
	if (dev->hw_dead || !oldest) {
		mutex_unlock(&dev->hw_lock);
		return;
	}
	if (!dev->halted && time_before(jiffies, oldest->deadline)) {
		dmagate_watchdog_arm(dev);
		mutex_unlock(&dev->hw_lock);
		return;
	}
	if (dmagate_hw_gone(dev)) {
		/* No reset to wait for: it is not there to write anything. */
		dmagate_fell_off(dev);
		mutex_unlock(&dev->hw_lock);
		return;
	}
	error = dev->halted ? -EIO : -ETIMEDOUT;
	dev_warn(&dev->pdev->dev, "%s: resetting the device (%u transfers in flight)\n",
		 dev->halted ? "device halted" : "transfer timed out", dev->nposted);
	/* Bus mastering off first: a transfer stops at once (docs/device.md, 5). */
	pci_clear_master(dev->pdev);
	if (dmagate_hw_reset(dev)) {
		dev_err(&dev->pdev->dev, "device did not stop; its buffers stay revoked\n");
		dmagate_mark_wedged(dev);
		mutex_unlock(&dev->hw_lock);
		dmagate_wake_sessions(dev);
		return;
	}
	list_splice_init(&dev->posted, &finished);
	dev->nposted = 0;
	pci_set_master(dev->pdev);
	restarted = !dmagate_hw_start(dev);
	if (!restarted) {
		dev->hw_dead = true;
		WRITE_ONCE(dev->failed, true);
	}
	mutex_unlock(&dev->hw_lock);

	dmagate_finish_all(&finished, error);
	if (!restarted)
		dmagate_wake_sessions(dev);
}

/* ---- The buffer --------------------------------------------------------- */

/* Unmap the buffer; @leak as for dmagate_xfer_unmap(). sess->lock held. */
static void dmagate_buffer_unmap(struct dmagate_session *sess, bool leak)
{
	struct device *dma_dev = dmagate_dma_dev(sess->dev);
	unsigned int i;

	lockdep_assert_held(&sess->lock);
	if (!sess->dma_mapped)
		return;
	for (i = 0; i < sess->nchunks; i++) {
		dma_unmap_page(dma_dev, sess->chunk_dma[i],
			       PAGE_SIZE << sess->chunk_order, DMA_BIDIRECTIONAL);
		if (leak)
			continue;
		dmagate_trace_region(sess->dev, false, "buffer", sess->id, 0,
				     (u64)i << (PAGE_SHIFT + sess->chunk_order),
				     sess->chunk_dma[i], PAGE_SIZE << sess->chunk_order);
	}
	sess->dma_mapped = false;
}

/*
 * The device is wedged and being removed: close the DMA API's books on the
 * session's mappings (behind an IOMMU this fences the device off them) and
 * free nothing.  sess->lock held.
 */
static void dmagate_session_leak(struct dmagate_session *sess)
{
	struct dmagate_xfer *xfer;

	list_for_each_entry(xfer, &sess->inflight, node)
		dmagate_xfer_unmap(xfer, true);
	dmagate_buffer_unmap(sess, true);
}

static void dmagate_buffer_free(struct dmagate_session *sess)
{
	unsigned int i;

	dmagate_buffer_unmap(sess, false);
	for (i = 0; i < sess->nchunks; i++)
		__free_pages(sess->chunks[i], sess->chunk_order);
	kfree(sess->chunk_dma);
	kfree(sess->chunks);
	sess->chunks = NULL;
	sess->chunk_dma = NULL;
	sess->nchunks = 0;
	sess->npages = 0;
	sess->length = 0;
}

/*
 * Allocate @nchunks chunks of 2^@order pages and, unless each transfer maps
 * its own, DMA-map them. sess->lock held.
 */
static int dmagate_chunks_alloc(struct dmagate_session *sess, unsigned int nchunks,
				unsigned int order)
{
	struct device *dma_dev = dmagate_dma_dev(sess->dev);
	gfp_t gfp = GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN;
	unsigned int i;

	if (order)
		gfp |= __GFP_RETRY_MAYFAIL;
	sess->chunks = kcalloc(nchunks, sizeof(*sess->chunks), GFP_KERNEL);
	if (!sess->chunks)
		return -ENOMEM;
	sess->chunk_dma = kcalloc(nchunks, sizeof(*sess->chunk_dma), GFP_KERNEL);
	if (!sess->chunk_dma)
		goto err_free_chunk_array;

	for (i = 0; i < nchunks; i++) {
		sess->chunks[i] = alloc_pages(gfp, order);
		if (!sess->chunks[i])
			goto err_free_chunks;
		if (dmagate_map_per_xfer)
			continue;
		sess->chunk_dma[i] = dma_map_page(dma_dev, sess->chunks[i], 0,
						  PAGE_SIZE << order, DMA_BIDIRECTIONAL);
		if (dma_mapping_error(dma_dev, sess->chunk_dma[i])) {
			__free_pages(sess->chunks[i], order);
			goto err_free_chunks;
		}
	}
	sess->nchunks = nchunks;
	sess->chunk_order = order;
	sess->dma_mapped = !dmagate_map_per_xfer;
	for (i = 0; sess->dma_mapped && i < nchunks; i++)
		dmagate_trace_region(sess->dev, true, "buffer", sess->id, 0,
				     (u64)i << (PAGE_SHIFT + order), sess->chunk_dma[i],
				     PAGE_SIZE << order);
	return 0;

err_free_chunks:
	while (i--) {
		if (!dmagate_map_per_xfer)
			dma_unmap_page(dma_dev, sess->chunk_dma[i], PAGE_SIZE << order,
				       DMA_BIDIRECTIONAL);
		__free_pages(sess->chunks[i], order);
	}
	kfree(sess->chunk_dma);
	sess->chunk_dma = NULL;
err_free_chunk_array:
	kfree(sess->chunks);
	sess->chunks = NULL;
	return -ENOMEM;
}

/*
 * Chunks of 2 MiB (PMD-mappable) or 64 KiB where memory allows, never so
 * small that a transfer needs more than DMAGATE_MAX_SEGMENTS SG entries.
 */
static int dmagate_buffer_alloc(struct dmagate_session *sess, u64 length)
{
	pgoff_t npages = length >> PAGE_SHIFT;
	unsigned int min_order = order_base_2(DIV_ROUND_UP(npages, DMAGATE_MAX_SEGMENTS));
	unsigned int order = max_t(unsigned int, min_order,
				   min_t(unsigned int, DMAGATE_CHUNK_ORDER, ilog2(npages)));
	int ret;

	if (DMAGATE_HUGE_ORDER && IS_ALIGNED(npages, 1UL << DMAGATE_HUGE_ORDER) &&
	    !dmagate_chunks_alloc(sess, npages >> DMAGATE_HUGE_ORDER, DMAGATE_HUGE_ORDER))
		goto out_allocated;

	for (;; order--) {
		ret = dmagate_chunks_alloc(sess, DIV_ROUND_UP(npages, 1UL << order), order);
		if (!ret || order == min_order)
			break;
	}
	if (ret)
		return ret;
out_allocated:
	sess->length = length;
	sess->npages = npages;
	return 0;
}

static unsigned long dmagate_pfn(struct dmagate_session *sess, pgoff_t pgoff)
{
	unsigned int shift = sess->chunk_order;

	return page_to_pfn(sess->chunks[pgoff >> shift]) + (pgoff & ((1UL << shift) - 1));
}

/* ---- Mapping and faults ------------------------------------------------- */

/*
 * The run of program-owned pages around @pgoff, as [*first, *last), or
 * false when the device owns @pgoff.  sess->lock held.
 */
static bool dmagate_owned_run(struct dmagate_session *sess, pgoff_t pgoff,
			      pgoff_t *first, pgoff_t *last)
{
	struct dmagate_xfer *xfer;

	*first = 0;
	*last = sess->npages;
	list_for_each_entry(xfer, &sess->inflight, node) {
		if (pgoff >= xfer->first && pgoff < xfer->last)
			return false;
		if (xfer->last <= pgoff)
			*first = max(*first, xfer->last);
		else
			*last = min(*last, xfer->first);
	}
	return true;
}

struct dmagate_regrant {
	struct dmagate_session *sess;
	struct vm_area_struct *vma;
	unsigned long start;		/* the address of file page @first */
	pgoff_t first;
};

/* apply_to_page_range() callback: map one program-owned page, PTE lock held. */
static int dmagate_regrant_pte(pte_t *pte, unsigned long addr, void *data)
{
	struct dmagate_regrant *r = data;
	pgoff_t pgoff = r->first + ((addr - r->start) >> PAGE_SHIFT);

	if (pte_none(ptep_get(pte)))
		set_pte_at(r->vma->vm_mm, addr, pte,
			   pte_mkspecial(pfn_pte(dmagate_pfn(r->sess, pgoff),
						 r->vma->vm_page_prot)));
	return 0;
}

/*
 * Map file pages [@first, @last) of @vma, program-owned, in one walk of the
 * page tables, as i915's remap_io_mapping() does (vmf_insert_pfn() walks
 * and locks them again for every page).  Entries already there stay.  On
 * failure (no memory for a page table) the rest can fault later.  No PMD
 * leaf may be in the range.  sess->lock and mmap_lock held.
 */
static void dmagate_map_run(struct dmagate_session *sess, struct vm_area_struct *vma,
			    pgoff_t first, pgoff_t last)
{
	struct dmagate_regrant regrant = {
		.sess = sess,
		.vma = vma,
		.first = first,
		.start = vma->vm_start + ((first - vma->vm_pgoff) << PAGE_SHIFT),
	};

	apply_to_page_range(vma->vm_mm, regrant.start, (last - first) << PAGE_SHIFT,
			    dmagate_regrant_pte, &regrant);
}

static vm_fault_t dmagate_vm_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct dmagate_session *sess = vma->vm_private_data;
	struct dmagate_cycle_stamps *cycle = &sess->dev->cycle;
	pgoff_t vma_first = vma->vm_pgoff, vma_last = vma_first + vma_pages(vma);
	pgoff_t first, last, pgoff;
	vm_fault_t ret = VM_FAULT_SIGBUS;
	u64 start = ktime_get_ns(), mapped;

	mutex_lock(&sess->lock);
	if (sess->gone || vmf->pgoff >= sess->npages) {
		atomic64_inc(&sess->dev->stats.sigbus);
		goto out_unlock;
	}
	if (READ_ONCE(dmagate_unsafe_no_revoke)) {
		first = 0;
		last = sess->npages;
	} else if (!dmagate_owned_run(sess, vmf->pgoff, &first, &last)) {
		atomic64_inc(&sess->dev->stats.sigbus);
		goto out_unlock;
	}
#ifdef CONFIG_ARCH_SUPPORTS_PMD_PFNMAP
	/* Mapped whole (one PMD entry) since the core looked: done. */
	if (pmd_leaf(pmdp_get_lockless(vmf->pmd))) {
		ret = VM_FAULT_NOPAGE;
		goto out_unlock;
	}
#endif
	mapped = ktime_get_ns();
	ret = vmf_insert_pfn(vma, vmf->address & PAGE_MASK, dmagate_pfn(sess, vmf->pgoff));
	if (ret & VM_FAULT_ERROR)
		goto out_unlock;
	/*
	 * Then up to DMAGATE_FAULT_PAGES of the run around it, the pages after
	 * it first: a re-granted range costs few faults, and the time this
	 * holds sess->lock (which SUBMIT and re-grants take) stays bounded.
	 */
	last = min3(last, vma_last, vmf->pgoff + DMAGATE_FAULT_PAGES);
	first = max3(first, vma_first, last > DMAGATE_FAULT_PAGES ?
		     last - DMAGATE_FAULT_PAGES : 0);
	if (DMAGATE_HUGE_ORDER && sess->chunk_order >= DMAGATE_HUGE_ORDER) {
		/*
		 * A neighbouring 2 MiB may be one PMD entry, which the walk must
		 * not meet: stay in the touched page's.
		 */
		pgoff = vmf->pgoff - ((vmf->address & ~PMD_MASK) >> PAGE_SHIFT);
		first = max(first, pgoff);
		last = min(last, pgoff + PTRS_PER_PMD);
	}
	dmagate_map_run(sess, vma, first, last);
	atomic64_add(ktime_get_ns() - mapped, &cycle->map_ns);
	atomic64_inc(&sess->dev->stats.faults);
out_unlock:
	mutex_unlock(&sess->lock);
	atomic64_add(ktime_get_ns() - start, &cycle->fault_ns);
	atomic64_inc(&cycle->faults);
	return ret;
}

#ifdef CONFIG_ARCH_SUPPORTS_PMD_PFNMAP
/*
 * A fault in a 2 MiB stretch of one chunk that the program owns whole and
 * the VMA covers: one PMD entry maps it.  Anything else falls back to
 * dmagate_vm_fault() and its PTEs.
 */
static vm_fault_t dmagate_vm_huge_fault(struct vm_fault *vmf, unsigned int order)
{
	struct vm_area_struct *vma = vmf->vma;
	struct dmagate_session *sess = vma->vm_private_data;
	struct dmagate_cycle_stamps *cycle = &sess->dev->cycle;
	unsigned long addr = vmf->address & PMD_MASK;
	pgoff_t pgoff = vma->vm_pgoff + ((addr - vma->vm_start) >> PAGE_SHIFT);
	vm_fault_t ret = VM_FAULT_FALLBACK;
	u64 start = ktime_get_ns();
	pgoff_t first, last;

	if (order != PMD_ORDER || addr < vma->vm_start || addr + PMD_SIZE > vma->vm_end ||
	    !IS_ALIGNED(pgoff, 1UL << PMD_ORDER))
		return VM_FAULT_FALLBACK;
	mutex_lock(&sess->lock);
	if (sess->gone || sess->chunk_order < PMD_ORDER ||
	    pgoff + (1UL << PMD_ORDER) > sess->npages)
		goto out_unlock;
	if (!READ_ONCE(dmagate_unsafe_no_revoke) &&
	    (!dmagate_owned_run(sess, pgoff, &first, &last) ||
	     last < pgoff + (1UL << PMD_ORDER)))
		goto out_unlock;
	ret = vmf_insert_pfn_pmd(vmf, dmagate_pmd_pfn(dmagate_pfn(sess, pgoff)),
				 vmf->flags & FAULT_FLAG_WRITE);
	atomic64_add(ktime_get_ns() - start, &cycle->map_ns);
	atomic64_add(ktime_get_ns() - start, &cycle->fault_ns);
	atomic64_inc(&cycle->faults);
	if (!(ret & VM_FAULT_ERROR)) {
		atomic64_inc(&sess->dev->stats.faults);
		atomic64_inc(&cycle->pmds);
	}
out_unlock:
	mutex_unlock(&sess->lock);
	return ret;
}
#endif

static const struct vm_operations_struct dmagate_vm_ops = {
	.fault = dmagate_vm_fault,
#ifdef CONFIG_ARCH_SUPPORTS_PMD_PFNMAP
	.huge_fault = dmagate_vm_huge_fault,
#endif
};

static int dmagate_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct dmagate_session *sess = file->private_data;
	int ret = 0;

	/* MAP_SHARED only (VM_MAYSHARE: a read-only MAP_SHARED has no VM_SHARED). */
	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	mutex_lock(&sess->lock);
	if (sess->gone)
		ret = -ENODEV;
	else if (!sess->npages)
		ret = -ENOBUFS;
	else if (vma->vm_pgoff >= sess->npages ||
		 vma_pages(vma) > sess->npages - vma->vm_pgoff)
		ret = -EINVAL;
	mutex_unlock(&sess->lock);
	if (ret)
		return ret;

	/* PFN mappings cannot be pinned, grown, dumped or copied on write. */
#ifdef DMAGATE_HAVE_VM_FLAGS_SET
	vm_flags_set(vma, VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
#else	/* before 6.3 */
	vma->vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
#endif
	vma->vm_ops = &dmagate_vm_ops;
	vma->vm_private_data = sess;
	return 0;
}

/* ---- ioctls ------------------------------------------------------------- */

/*
 * Copy in a structure whose first field is its size as the caller knows
 * it: shorter than ours is EINVAL, longer is fine if the extra is zero.
 */
static int dmagate_arg_in(void *karg, size_t ksize, const void __user *uarg, u32 *usize)
{
	if (get_user(*usize, (const u32 __user *)uarg))
		return -EFAULT;
	if (*usize < ksize)
		return -EINVAL;
	if (*usize > PAGE_SIZE)
		return -E2BIG;	/* as clone3() and openat2() */
	return copy_struct_from_user(karg, ksize, uarg, *usize);
}

static int dmagate_arg_out(void __user *uarg, const void *karg, size_t ksize)
{
	return copy_to_user(uarg, karg, ksize) ? -EFAULT : 0;
}

static long dmagate_ioc_info(struct dmagate_session *sess, void __user *uarg)
{
	struct dmagate_dev *dev = sess->dev;
	struct dmagate_info info;
	u32 usize;
	int ret;

	ret = dmagate_arg_in(&info, sizeof(info), uarg, &usize);
	if (ret)
		return ret;
	info.version = DMAGATE_UAPI_VERSION;
	info.max_buffer = max_buffer;
	info.device_version = dev->version;
	info.irq_mode = dev->irq_mode;
	return dmagate_arg_out(uarg, &info, sizeof(info));
}

static long dmagate_ioc_alloc(struct dmagate_session *sess, void __user *uarg)
{
	struct dmagate_alloc alloc;
	u32 usize;
	int ret;

	ret = dmagate_arg_in(&alloc, sizeof(alloc), uarg, &usize);
	if (ret)
		return ret;
	if (alloc.flags || !alloc.length || !PAGE_ALIGNED(alloc.length))
		return -EINVAL;
	if (alloc.length > max_buffer)
		return -EFBIG;

	mutex_lock(&sess->lock);
	if (sess->gone)
		ret = -ENODEV;
	else if (sess->npages)
		ret = -EEXIST;
	else
		ret = dmagate_buffer_alloc(sess, alloc.length);
	mutex_unlock(&sess->lock);
	return ret;
}

static bool dmagate_overlaps(struct dmagate_session *sess, pgoff_t first, pgoff_t last)
{
	struct dmagate_xfer *xfer;

	list_for_each_entry(xfer, &sess->inflight, node)
		if (first < xfer->last && xfer->first < last)
			return true;
	return false;
}

/*
 * Take the range from the program and give it to the device.  The range
 * is marked device-owned and unmapped under sess->lock, which the fault
 * handler takes too, so no fault can map a page between the two.
 */
/* Take a transfer's pages away from every mapping of the session. */
static void dmagate_revoke(struct dmagate_xfer *xfer)
{
	struct dmagate_session *sess = xfer->sess;
	struct dmagate_dev *dev = sess->dev;
	u64 start = ktime_get_ns();

	atomic64_set(&dev->cycle.fault_ns, 0);
	atomic64_set(&dev->cycle.map_ns, 0);
	atomic64_set(&dev->cycle.faults, 0);
	atomic64_set(&dev->cycle.pmds, 0);
	atomic64_set(&dev->cycle.wait_map_ns, 0);
	if (READ_ONCE(dmagate_unsafe_no_revoke)) {
		dev_warn_once(&dev->pdev->dev,
			      "unsafe_no_revoke: programs keep their pages during DMA (benchmarks only)\n");
		atomic64_set(&dev->cycle.zap_ns, 0);
		return;
	}
	unmap_mapping_range(sess->inode->i_mapping, (loff_t)xfer->first << PAGE_SHIFT,
			    (loff_t)(xfer->last - xfer->first) << PAGE_SHIFT, 1);
	atomic64_set(&dev->cycle.zap_ns, ktime_get_ns() - start);
	atomic64_inc(&dev->stats.revocations);
}

static int dmagate_submit_locked(struct dmagate_session *sess, struct dmagate_xfer *xfer,
				 u64 param, u64 *seq)
{
	struct dmagate_dev *dev = sess->dev;
	int ret;

	if (sess->gone)
		return -ENODEV;
	if (!sess->npages)
		return -ENOBUFS;
	if (xfer->offset >= sess->length || xfer->length > sess->length - xfer->offset)
		return -ERANGE;
	xfer->first = xfer->offset >> PAGE_SHIFT;
	xfer->last = DIV_ROUND_UP(xfer->offset + xfer->length, PAGE_SIZE);
	if (dmagate_overlaps(sess, xfer->first, xfer->last))
		return -EBUSY;

	mutex_lock(&dev->hw_lock);
	if (dev->hw_dead) {
		ret = READ_ONCE(dev->failed) ? -EIO : -ENODEV;
		goto out_unlock;
	}
	if (dev->nposted == DMAGATE_SQ_ENTRIES - 1) {
		ret = -EAGAIN;
		goto out_unlock;
	}
	xfer->rec.seq = ++sess->next_seq;
	list_add_tail(&xfer->node, &sess->inflight);
	dmagate_revoke(xfer);
	dmagate_trace_owner(xfer, true);
	if (dmagate_map_per_xfer) {
		ret = dmagate_xfer_map(xfer);
		if (ret)
			goto err_give_back;
	} else {
		dmagate_sync(xfer, true);
	}
	kref_get(&sess->ref);
	atomic_inc(&sess->ninflight);
	*seq = xfer->rec.seq;
	dmagate_hw_post(dev, xfer, xfer->op == DMAGATE_XFER_CHECKSUM ? 0 : param);
	mutex_unlock(&dev->hw_lock);
	atomic64_inc(&dev->stats.submits);
	return 0;

err_give_back:
	/* Never posted: the next touch maps the pages again. */
	dmagate_xfer_unmap(xfer, false);
	dmagate_trace_owner(xfer, false);
	list_del(&xfer->node);
	sess->next_seq--;
out_unlock:
	mutex_unlock(&dev->hw_lock);
	return ret;
}

static const enum dma_data_direction dmagate_directions[] = {
	[DMAGATE_XFER_FILL] = DMA_FROM_DEVICE,
	[DMAGATE_XFER_CHECKSUM] = DMA_TO_DEVICE,
	[DMAGATE_XFER_TRANSFORM] = DMA_BIDIRECTIONAL,
};

static long dmagate_ioc_submit(struct dmagate_session *sess, void __user *uarg)
{
	struct dmagate_submit __user *usubmit = uarg;
	struct dmagate_submit submit;
	struct dmagate_xfer *xfer;
	u32 usize;
	int ret;

	ret = dmagate_arg_in(&submit, sizeof(submit), uarg, &usize);
	if (ret)
		return ret;
	if (submit.flags || submit.reserved ||
	    submit.op < DMAGATE_XFER_FILL || submit.op > DMAGATE_XFER_TRANSFORM ||
	    !PAGE_ALIGNED(submit.offset) || !submit.length)
		return -EINVAL;
	/* EFAULT before anything is posted: the one output must be writable. */
	if (put_user(0ULL, &usubmit->seq))
		return -EFAULT;

	xfer = kzalloc_obj(*xfer, GFP_KERNEL);
	if (!xfer)
		return -ENOMEM;
	INIT_LIST_HEAD(&xfer->posted);
	xfer->sess = sess;
	xfer->op = submit.op;
	xfer->dir = dmagate_directions[submit.op];
	xfer->offset = submit.offset;
	xfer->length = submit.length;

	mutex_lock(&sess->lock);
	ret = dmagate_submit_locked(sess, xfer, submit.param, &submit.seq);
	mutex_unlock(&sess->lock);
	if (ret) {
		kfree(xfer);
		return ret;
	}
	/*
	 * Posted: this succeeded whatever happens here.  Only a thread that
	 * unmapped the argument meanwhile can make the copy fail; its record
	 * still reaches WAIT(0) and read().
	 */
	if (put_user(submit.seq, &usubmit->seq))
		dev_dbg(&sess->dev->pdev->dev, "SUBMIT: the caller lost its argument\n");
	return 0;
}

static struct dmagate_xfer *dmagate_find(struct list_head *list, u64 seq)
{
	struct dmagate_xfer *xfer;

	list_for_each_entry(xfer, list, node)
		if (!seq || xfer->rec.seq == seq)
			return xfer;
	return NULL;
}

/*
 * Take the record of transfer @seq (0: the oldest) off the done list,
 * waiting up to @timeout jiffies for it; with @idle_ok, wait even while
 * nothing is in flight (a blocking read()). The caller owns *@out: it
 * frees it, or hands it back with dmagate_untake_record().
 */
static int dmagate_take_record(struct dmagate_session *sess, u64 seq, long timeout,
			       bool idle_ok, struct dmagate_xfer **out)
{
	struct dmagate_xfer *xfer;
	int seen, ret;

	for (;;) {
		ret = 0;
		mutex_lock(&sess->lock);
		/* Sampled under the lock that completions take: no wakeup is lost. */
		seen = atomic_read(&sess->events);
		xfer = dmagate_find(&sess->done, seq);
		if (xfer)
			list_del(&xfer->node);
		else if (sess->gone)
			ret = -ENODEV;
		else if (!idle_ok && !dmagate_find(&sess->inflight, seq))
			ret = -ENOENT;
		else if (READ_ONCE(sess->dev->failed))
			ret = -EIO;	/* nothing more will finish */
		mutex_unlock(&sess->lock);
		if (xfer) {
			*out = xfer;
			return 0;
		}
		if (ret)
			return ret;
		timeout = wait_event_interruptible_timeout(sess->wq,
							   atomic_read(&sess->events) != seen,
							   timeout);
		if (timeout < 0)
			return -ERESTARTSYS;
		if (!timeout)
			return -ETIMEDOUT;
	}
}

/* A record that could not be copied out goes back, still the oldest. */
static void dmagate_untake_record(struct dmagate_session *sess, struct dmagate_xfer *xfer)
{
	mutex_lock(&sess->lock);
	list_add(&xfer->node, &sess->done);
	mutex_unlock(&sess->lock);
}

/*
 * The end (a file page) of the 2 MiB stretch of @vma's address space that
 * holds @pgoff; *@pmd: dmagate_vm_huge_fault() would map it with one PMD
 * entry.  @vma a mapping of @sess.
 */
static pgoff_t dmagate_stretch_end(struct dmagate_session *sess, struct vm_area_struct *vma,
				   pgoff_t pgoff, bool *pmd)
{
	unsigned long addr = vma->vm_start + ((pgoff - vma->vm_pgoff) << PAGE_SHIFT);
	unsigned long stretch = addr & PMD_MASK;

	*pmd = DMAGATE_HUGE_ORDER && sess->chunk_order >= DMAGATE_HUGE_ORDER &&
	       stretch >= vma->vm_start && stretch + PMD_SIZE <= vma->vm_end &&
	       IS_ALIGNED(pgoff - ((addr - stretch) >> PAGE_SHIFT), PTRS_PER_PMD);
	return pgoff + ((stretch + PMD_SIZE - addr) >> PAGE_SHIFT);
}

/*
 * Map a finished transfer's pages [@first, @last) into the caller's own
 * mappings of the session as read() or WAIT hands over its record: the
 * program touches them next, and a fault per run costs a trap round trip
 * more than this walk.  Best effort, as a fault: the pages the program
 * owns, one 2 MiB stretch per hold of sess->lock, nothing if mmap_lock is
 * contended.  Left to fault as usual: other processes' mappings, and the
 * stretches that one PMD fault maps whole (a PTE walk must not meet a PMD
 * entry).  mmap_lock (read) then sess->lock, the fault handler's order.
 */
static void dmagate_map_for_caller(struct dmagate_session *sess, pgoff_t first, pgoff_t last)
{
	struct mm_struct *mm = current->mm;
	pgoff_t pgoff, end, next, run_first, run_last;
	struct vm_area_struct *vma;
	struct vma_iterator vmi;
	u64 start;
	bool pmd;

	if (!READ_ONCE(map_on_wait) || !mm || READ_ONCE(dmagate_unsafe_no_revoke) ||
	    !mmap_read_trylock(mm))
		return;
	start = ktime_get_ns();
	vma_iter_init(&vmi, mm, 0);
	for_each_vma(vmi, vma) {
		if (vma->vm_ops != &dmagate_vm_ops || vma->vm_private_data != sess ||
		    !(vma->vm_flags & (VM_READ | VM_WRITE)))
			continue;
		pgoff = max(first, vma->vm_pgoff);
		end = min(last, vma->vm_pgoff + vma_pages(vma));
		for (; pgoff < end; pgoff = next) {
			next = min(end, dmagate_stretch_end(sess, vma, pgoff, &pmd));
			if (pmd)
				continue;
			mutex_lock(&sess->lock);
			if (sess->gone) {
				mutex_unlock(&sess->lock);
				goto out_unlock;
			}
			if (dmagate_owned_run(sess, pgoff, &run_first, &run_last))
				dmagate_map_run(sess, vma, pgoff, min(next, run_last));
			mutex_unlock(&sess->lock);
		}
	}
out_unlock:
	atomic64_add(ktime_get_ns() - start, &sess->dev->cycle.wait_map_ns);
	mmap_read_unlock(mm);
}

static long dmagate_ioc_wait(struct dmagate_session *sess, void __user *uarg)
{
	struct dmagate_xfer *xfer;
	struct dmagate_wait wait;
	long timeout;
	u32 usize;
	int ret;

	ret = dmagate_arg_in(&wait, sizeof(wait), uarg, &usize);
	if (ret)
		return ret;
	if (wait.flags)
		return -EINVAL;
	/* Rounded up: a short timeout still waits one tick. */
	timeout = wait.timeout_ns < 0 ? MAX_SCHEDULE_TIMEOUT :
		  (long)min_t(u64, DIV_ROUND_UP_ULL(wait.timeout_ns, TICK_NSEC),
			      MAX_SCHEDULE_TIMEOUT - 1);
	ret = dmagate_take_record(sess, wait.seq, timeout, false, &xfer);
	if (ret)
		return ret == -ERESTARTSYS ? -EINTR : ret;
	wait.completion = xfer->rec;
	ret = dmagate_arg_out(uarg, &wait, sizeof(wait));
	if (ret) {
		dmagate_untake_record(sess, xfer);
		return ret;
	}
	dmagate_map_for_caller(sess, xfer->first, xfer->last);
	kfree(xfer);
	return 0;
}

static long dmagate_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct dmagate_session *sess = file->private_data;
	void __user *uarg = (void __user *)arg;

	/*
	 * The whole command: direction, type, number and size.  A structure
	 * that grows gets a new command; its size field says which version a
	 * caller has (dmagate_arg_in()).
	 */
	switch (cmd) {
	case DMAGATE_IOC_INFO:
		return dmagate_ioc_info(sess, uarg);
	case DMAGATE_IOC_ALLOC:
		return dmagate_ioc_alloc(sess, uarg);
	case DMAGATE_IOC_SUBMIT:
		return dmagate_ioc_submit(sess, uarg);
	case DMAGATE_IOC_WAIT:
		return dmagate_ioc_wait(sess, uarg);
	default:
		return -ENOTTY;
	}
}

/* ---- read, poll, open, release ------------------------------------------ */

static ssize_t dmagate_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	struct dmagate_session *sess = file->private_data;
	struct dmagate_xfer *xfer;
	size_t done = 0;
	bool block;
	int ret;

	if (count < sizeof(struct dmagate_completion))
		return -EINVAL;
	while (count - done >= sizeof(struct dmagate_completion)) {
		/* Block for the first record only. */
		block = !done && !(file->f_flags & O_NONBLOCK);
		ret = dmagate_take_record(sess, 0, block ? MAX_SCHEDULE_TIMEOUT : 0, block, &xfer);
		if (ret) {
			if (done)
				break;
			return ret == -ETIMEDOUT || ret == -ENOENT ? -EAGAIN : ret;
		}
		if (copy_to_user(buf + done, &xfer->rec, sizeof(struct dmagate_completion))) {
			dmagate_untake_record(sess, xfer);
			return done ? done : -EFAULT;
		}
		dmagate_map_for_caller(sess, xfer->first, xfer->last);
		kfree(xfer);
		done += sizeof(struct dmagate_completion);
	}
	return done;
}

static __poll_t dmagate_poll(struct file *file, poll_table *wait)
{
	struct dmagate_session *sess = file->private_data;
	struct dmagate_xfer *xfer;
	__poll_t mask = 0;

	poll_wait(file, &sess->wq, wait);
	mutex_lock(&sess->lock);
	list_for_each_entry(xfer, &sess->done, node) {
		mask |= EPOLLIN | EPOLLRDNORM;
		if (xfer->rec.error)
			mask |= EPOLLERR;
	}
	if (sess->gone)
		mask |= EPOLLHUP;
	else if (READ_ONCE(sess->dev->failed))
		mask |= EPOLLERR | EPOLLHUP;
	mutex_unlock(&sess->lock);
	return mask;
}

static int dmagate_open(struct inode *inode, struct file *file)
{
	struct dmagate_dev *dev = container_of(file->private_data, struct dmagate_dev, misc);
	struct dmagate_session *sess;
	int ret;

	sess = kzalloc_obj(*sess, GFP_KERNEL);
	if (!sess)
		return -ENOMEM;
	sess->inode = alloc_anon_inode(dmagate_mnt->mnt_sb);
	if (IS_ERR(sess->inode)) {
		ret = PTR_ERR(sess->inode);
		goto err_free_session;
	}
	kref_init(&sess->ref);
	sess->id = atomic_inc_return(&dmagate_session_ids);
	mutex_init(&sess->lock);
	init_waitqueue_head(&sess->wq);
	INIT_LIST_HEAD(&sess->inflight);
	INIT_LIST_HEAD(&sess->done);
	sess->dev = dev;

	mutex_lock(&dev->sessions_lock);
	if (dev->gone) {
		mutex_unlock(&dev->sessions_lock);
		ret = -ENODEV;
		goto err_put_inode;
	}
	kref_get(&dev->ref);
	list_add_tail(&sess->node, &dev->sessions);
	mutex_unlock(&dev->sessions_lock);

	/* Every mapping of this file links into the session's own mapping. */
	file->f_mapping = sess->inode->i_mapping;
	file->private_data = sess;
	return nonseekable_open(inode, file);

err_put_inode:
	iput(sess->inode);
err_free_session:
	kfree(sess);
	return ret;
}

/*
 * The last reference to the file is gone, so are all its mappings.  The
 * device may still write the buffer: wait for its transfers to finish (the
 * watchdog bounds the wait), so that close, exit and SIGKILL return with
 * the device done.  Only a device that would not stop (wedged) keeps its
 * transfers, their references, and so the buffer, for good.
 */
static int dmagate_release(struct inode *inode, struct file *file)
{
	struct dmagate_session *sess = file->private_data;
	struct dmagate_dev *dev = sess->dev;

	wait_event(sess->wq, !atomic_read(&sess->ninflight) || READ_ONCE(dev->wedged));

	/* Under sessions_lock, so that remove() either sees it or is done with it. */
	mutex_lock(&dev->sessions_lock);
	mutex_lock(&sess->lock);
	if (list_empty(&sess->inflight)) {
		dmagate_buffer_unmap(sess, false);
		list_del(&sess->node);
	} else {
		dev_crit(&dev->pdev->dev,
			 "leaking a buffer a device that would not stop may still write\n");
		list_move(&sess->node, &dev->leaked);	/* for remove() to unmap */
	}
	mutex_unlock(&sess->lock);
	mutex_unlock(&dev->sessions_lock);

	dmagate_session_put(sess);
	return 0;
}

static const struct file_operations dmagate_fops = {
	.owner = THIS_MODULE,
	.open = dmagate_open,
	.release = dmagate_release,
	.read = dmagate_read,
	.poll = dmagate_poll,
	.mmap = dmagate_mmap,
	/* 2 MiB-aligned addresses for mappings that long: PMD entries fit. */
	.get_unmapped_area = thp_get_unmapped_area,
	.unlocked_ioctl = dmagate_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* ---- debugfs: /sys/kernel/debug/dmagate/ (benchmarks) ------------------- */

static int dmagate_last_cycle_show(struct seq_file *m, void *unused)
{
	struct dmagate_cycle_stamps *cycle = &((struct dmagate_dev *)m->private)->cycle;

	seq_printf(m, "zap_ns=%lld doorbell_ns=%lld irq_ns=%lld finish_ns=%lld fault_ns=%lld map_ns=%lld faults=%lld pmds=%lld wait_map_ns=%lld\n",
		   atomic64_read(&cycle->zap_ns), atomic64_read(&cycle->doorbell_ns),
		   atomic64_read(&cycle->irq_ns), atomic64_read(&cycle->finish_ns),
		   atomic64_read(&cycle->fault_ns), atomic64_read(&cycle->map_ns),
		   atomic64_read(&cycle->faults), atomic64_read(&cycle->pmds),
		   atomic64_read(&cycle->wait_map_ns));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(dmagate_last_cycle);

/* ---- sysfs statistics: /sys/class/misc/dmagate<N>/stats/ --------------- */

struct dmagate_stat_attr {
	struct device_attribute attr;
	size_t offset;			/* of an atomic64_t in struct dmagate_stats */
};

static ssize_t dmagate_stat_show(struct device *d, struct device_attribute *attr, char *buf)
{
	struct miscdevice *misc = dev_get_drvdata(d);
	struct dmagate_dev *dev = container_of(misc, struct dmagate_dev, misc);
	struct dmagate_stat_attr *stat = container_of(attr, struct dmagate_stat_attr, attr);
	atomic64_t *counter = (void *)&dev->stats + stat->offset;

	return sysfs_emit(buf, "%lld\n", atomic64_read(counter));
}

static struct dmagate_stat_attr dmagate_stat_attrs[] = {
	{ __ATTR(submits, 0444, dmagate_stat_show, NULL),
	  offsetof(struct dmagate_stats, submits) },
	{ __ATTR(completions, 0444, dmagate_stat_show, NULL),
	  offsetof(struct dmagate_stats, completions) },
	{ __ATTR(errors, 0444, dmagate_stat_show, NULL),
	  offsetof(struct dmagate_stats, errors) },
	{ __ATTR(timeouts, 0444, dmagate_stat_show, NULL),
	  offsetof(struct dmagate_stats, timeouts) },
	{ __ATTR(revocations, 0444, dmagate_stat_show, NULL),
	  offsetof(struct dmagate_stats, revocations) },
	{ __ATTR(faults, 0444, dmagate_stat_show, NULL),
	  offsetof(struct dmagate_stats, faults) },
	{ __ATTR(sigbus, 0444, dmagate_stat_show, NULL),
	  offsetof(struct dmagate_stats, sigbus) },
};

static struct attribute *dmagate_stats_attrs[] = {
	&dmagate_stat_attrs[0].attr.attr,
	&dmagate_stat_attrs[1].attr.attr,
	&dmagate_stat_attrs[2].attr.attr,
	&dmagate_stat_attrs[3].attr.attr,
	&dmagate_stat_attrs[4].attr.attr,
	&dmagate_stat_attrs[5].attr.attr,
	&dmagate_stat_attrs[6].attr.attr,
	NULL
};

static const struct attribute_group dmagate_stats_group = {
	.name = "stats",
	.attrs = dmagate_stats_attrs,
};

static const struct attribute_group *dmagate_groups[] = {
	&dmagate_stats_group,
	NULL
};

/* ---- PCI ---------------------------------------------------------------- */

/*
 * The rings and SG lists are not managed (devres) allocations: they are
 * freed only once the device is known to have stopped, never by unbind
 * alone.  Each is a streaming mapping of pages of its own, not a coherent
 * allocation, so that a wedged device's can be unmapped without being
 * freed: the DMA API's books close, an IOMMU fences the device off them,
 * and the pages are leaked.
 */
static void *dmagate_ring_alloc(struct dmagate_dev *dev, const char *what, size_t size,
				dma_addr_t *dma)
{
	struct device *dma_dev = dmagate_dma_dev(dev);
	void *ring = alloc_pages_exact(size, GFP_KERNEL | __GFP_ZERO);

	if (!ring)
		return NULL;
	*dma = dma_map_single(dma_dev, ring, size, DMA_BIDIRECTIONAL);
	if (dma_mapping_error(dma_dev, *dma)) {
		free_pages_exact(ring, size);
		return NULL;
	}
	dmagate_trace_region(dev, true, what, 0, 0, 0, *dma, size);
	return ring;
}

/*
 * Unmap a ring; free it too unless @leak.  A leaked ring keeps its window
 * in the ownership record (no unmap event): its pages are never reused.
 */
static void dmagate_ring_free(struct dmagate_dev *dev, const char *what, size_t size,
			      void **ring, dma_addr_t dma, bool leak)
{
	if (!*ring)
		return;
	dma_unmap_single(dmagate_dma_dev(dev), dma, size, DMA_BIDIRECTIONAL);
	if (!leak) {
		dmagate_trace_region(dev, false, what, 0, 0, 0, dma, size);
		free_pages_exact(*ring, size);
	}
	*ring = NULL;
}

static void dmagate_free_rings(struct dmagate_dev *dev, bool leak)
{
	unsigned int i;

	for (i = 0; i < DMAGATE_SQ_ENTRIES; i++)
		dmagate_ring_free(dev, "sgl", DMAGATE_SGL_BYTES, &dev->sgl[i], dev->sgl_dma[i],
				  leak);
	dmagate_ring_free(dev, "cq", DMAGATE_CQ_ENTRIES * DMAGATE_CPL_SIZE, &dev->cq,
			  dev->cq_dma, leak);
	dmagate_ring_free(dev, "sq", DMAGATE_SQ_ENTRIES * DMAGATE_DESC_SIZE, &dev->sq,
			  dev->sq_dma, leak);
}

static int dmagate_alloc_rings(struct dmagate_dev *dev)
{
	unsigned int i;

	dev->sq = dmagate_ring_alloc(dev, "sq", DMAGATE_SQ_ENTRIES * DMAGATE_DESC_SIZE,
				     &dev->sq_dma);
	dev->cq = dmagate_ring_alloc(dev, "cq", DMAGATE_CQ_ENTRIES * DMAGATE_CPL_SIZE,
				     &dev->cq_dma);
	if (!dev->sq || !dev->cq)
		goto err_free_rings;
	for (i = 0; i < DMAGATE_SQ_ENTRIES; i++) {
		dev->sgl[i] = dmagate_ring_alloc(dev, "sgl", DMAGATE_SGL_BYTES, &dev->sgl_dma[i]);
		if (!dev->sgl[i])
			goto err_free_rings;
	}
	return 0;

err_free_rings:
	dmagate_free_rings(dev, false);	/* the device was not told of any yet */
	return -ENOMEM;
}

static int dmagate_irq_types(void)
{
	if (sysfs_streq(irq_mode, "auto"))
		return PCI_IRQ_MSIX | PCI_IRQ_MSI | PCI_IRQ_INTX;
	if (sysfs_streq(irq_mode, "msix"))
		return PCI_IRQ_MSIX;
	if (sysfs_streq(irq_mode, "msi"))
		return PCI_IRQ_MSI;
	if (sysfs_streq(irq_mode, "intx"))
		return PCI_IRQ_INTX;
	return -EINVAL;
}

static const char *const dmagate_irq_names[] = {
	[DMAGATE_IRQ_MSIX] = "MSI-X",
	[DMAGATE_IRQ_MSI] = "MSI",
	[DMAGATE_IRQ_INTX] = "INTx",
};

static void dmagate_free_irqs(struct dmagate_dev *dev)
{
	int i;

	for (i = 0; i < dev->nvecs; i++)
		free_irq(pci_irq_vector(dev->pdev, i), dev);
	pci_free_irq_vectors(dev->pdev);
	dev->nvecs = 0;
}

static int dmagate_setup_irqs(struct dmagate_dev *dev)
{
	struct pci_dev *pdev = dev->pdev;
	int types = dmagate_irq_types();
	int nvecs, i, ret;

	if (types < 0)
		return dev_err_probe(&pdev->dev, types,
				     "irq_mode=%s: use auto, msix, msi or intx\n", irq_mode);
	/* MSI-X with both vectors (the error cause has its own), else one vector. */
	nvecs = -ENOSPC;
	if (types & PCI_IRQ_MSIX)
		nvecs = pci_alloc_irq_vectors(pdev, DMAGATE_MSIX_VECTORS, DMAGATE_MSIX_VECTORS,
					      PCI_IRQ_MSIX);
	if (nvecs < 0 && (types & ~PCI_IRQ_MSIX))
		nvecs = pci_alloc_irq_vectors(pdev, 1, 1, types & ~PCI_IRQ_MSIX);
	if (nvecs < 0)
		return dev_err_probe(&pdev->dev, nvecs, "no %s interrupts\n", irq_mode);
	if (pdev->msix_enabled)
		dev->irq_mode = DMAGATE_IRQ_MSIX;
	else if (pdev->msi_enabled)
		dev->irq_mode = DMAGATE_IRQ_MSI;
	else
		dev->irq_mode = DMAGATE_IRQ_INTX;

	for (i = 0; i < nvecs; i++) {
		ret = request_threaded_irq(pci_irq_vector(pdev, i), dmagate_irq,
					   dmagate_irq_thread,
					   IRQF_ONESHOT | (dev->irq_mode == DMAGATE_IRQ_INTX ?
							   IRQF_SHARED : 0),
					   dev->name, dev);
		if (ret)
			goto err_free_irqs;
		dev->nvecs = i + 1;
	}
	return 0;

err_free_irqs:
	dmagate_free_irqs(dev);
	return dev_err_probe(&pdev->dev, ret, "cannot request interrupt %d\n", i);
}

static int dmagate_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	bool keep_rings = false;
	struct dmagate_dev *dev;
	u32 ident;
	int ret;

	dev = kzalloc_obj(*dev, GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	kref_init(&dev->ref);
	dev->pdev = pci_dev_get(pdev);
	mutex_init(&dev->sessions_lock);
	mutex_init(&dev->hw_lock);
	spin_lock_init(&dev->time_lock);
	INIT_LIST_HEAD(&dev->sessions);
	INIT_LIST_HEAD(&dev->leaked);
	INIT_LIST_HEAD(&dev->posted);
	INIT_DELAYED_WORK(&dev->watchdog, dmagate_watchdog);
	INIT_WORK(&dev->remove_work, dmagate_remove_work);

	ret = pcim_enable_device(pdev);
	if (ret) {
		dev_err_probe(&pdev->dev, ret, "cannot enable device\n");
		goto err_put_dev;
	}
	ret = pcim_iomap_regions(pdev, BIT(DMAGATE_REGS_BAR), DRV_NAME);
	if (ret) {
		dev_err_probe(&pdev->dev, ret, "cannot map BAR0\n");
		goto err_put_dev;
	}
	dev->regs = pcim_iomap_table(pdev)[DMAGATE_REGS_BAR];
	ident = readl(dev->regs + DMAGATE_REG_ID);
	if (ident != DMAGATE_ID_VALUE) {
		ret = dev_err_probe(&pdev->dev, -ENODEV, "unexpected ID register 0x%08x\n", ident);
		goto err_put_dev;
	}
	dev->version = readl(dev->regs + DMAGATE_REG_VERSION);

	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(32));
	if (ret) {
		dev_err_probe(&pdev->dev, ret, "no usable DMA mask\n");
		goto err_put_dev;
	}
	ret = dmagate_alloc_rings(dev);
	if (ret) {
		dev_err_probe(&pdev->dev, ret, "cannot allocate the rings\n");
		goto err_put_dev;
	}
	ret = ida_alloc(&dmagate_ida, GFP_KERNEL);
	if (ret < 0)
		goto err_free_rings;
	dev->id = ret;
	snprintf(dev->name, sizeof(dev->name), DRV_NAME "%d", dev->id);

	/*
	 * Reset before mastering is on: a device that was left mid-transfer
	 * (its last driver gone, or back on the bus) must not finish it now.
	 */
	mutex_lock(&dev->hw_lock);
	ret = dmagate_hw_reset(dev);
	if (!ret) {
		pci_set_master(pdev);
		ret = dmagate_hw_start(dev);
	}
	mutex_unlock(&dev->hw_lock);
	if (ret) {
		dev_err_probe(&pdev->dev, ret, "device does not start\n");
		goto err_stop_device;
	}
	ret = dmagate_setup_irqs(dev);
	if (ret)
		goto err_stop_device;

	dev->misc.minor = MISC_DYNAMIC_MINOR;
	dev->misc.name = dev->name;
	dev->misc.fops = &dmagate_fops;
	dev->misc.parent = &pdev->dev;
	dev->misc.groups = dmagate_groups;
	dev->misc.mode = 0600;
	ret = misc_register(&dev->misc);
	if (ret) {
		dev_err_probe(&pdev->dev, ret, "cannot register /dev/%s\n", dev->name);
		goto err_free_irqs;
	}
	pci_set_drvdata(pdev, dev);
	dev->debugfs = debugfs_create_dir(dev->name, dmagate_debugfs);
	debugfs_create_file("last_cycle", 0400, dev->debugfs, dev, &dmagate_last_cycle_fops);
	dev_info(&pdev->dev, "bound, device version %u.%u\n",
		 dev->version >> 16, dev->version & 0xffff);
	dev_info(&pdev->dev, "/dev/%s, %s interrupts\n", dev->name,
		 dmagate_irq_names[dev->irq_mode]);
	return 0;

err_free_irqs:
	dmagate_free_irqs(dev);
err_stop_device:
	pci_clear_master(pdev);
	keep_rings = dmagate_hw_reset(dev) != 0;
	ida_free(&dmagate_ida, dev->id);
err_free_rings:
	if (keep_rings)
		dev_crit(&pdev->dev, "device did not stop: leaking its rings\n");
	dmagate_free_rings(dev, keep_rings);
err_put_dev:
	dmagate_dev_put(dev);
	return ret;
}

/*
 * Unbind or hot-unplug, idle or mid-transfer, with buffers mapped: revoke
 * every mapping, stop the device, fail what it held, and leave the open
 * files to their owners (they see EPOLLHUP and ENODEV, and SIGBUS on a
 * touch) until they close them.
 */
static void dmagate_remove(struct pci_dev *pdev)
{
	struct dmagate_dev *dev = pci_get_drvdata(pdev);
	struct dmagate_session *sess;
	LIST_HEAD(finished);
	bool stopped;

	misc_deregister(&dev->misc);
	debugfs_remove_recursive(dev->debugfs);

	mutex_lock(&dev->sessions_lock);
	dev->gone = true;
	list_for_each_entry(sess, &dev->sessions, node) {
		mutex_lock(&sess->lock);
		sess->gone = true;
		unmap_mapping_range(sess->inode->i_mapping, 0, 0, 1);
		atomic64_inc(&dev->stats.revocations);
		mutex_unlock(&sess->lock);
	}
	mutex_unlock(&dev->sessions_lock);

	mutex_lock(&dev->hw_lock);
	/* Bus mastering off first: a transfer stops at once (docs/device.md, 5). */
	pci_clear_master(pdev);
	stopped = !dev->wedged && !dmagate_hw_reset(dev);
	dev->hw_dead = true;
	if (stopped) {
		list_splice_init(&dev->posted, &finished);
		dev->nposted = 0;
	} else {
		dmagate_mark_wedged(dev);
	}
	mutex_unlock(&dev->hw_lock);
	if (!stopped)
		dev_crit(&pdev->dev,
			 "device did not stop: its buffers and rings stay revoked, never freed\n");

	/* No handler or watchdog runs past here. */
	dmagate_free_irqs(dev);
	cancel_delayed_work_sync(&dev->watchdog);
	dmagate_finish_all(&finished, -ENODEV);

	mutex_lock(&dev->sessions_lock);
	list_for_each_entry(sess, &dev->sessions, node) {
		mutex_lock(&sess->lock);
		if (!stopped)
			dmagate_session_leak(sess);
		else if (list_empty(&sess->inflight))
			dmagate_buffer_unmap(sess, false);
		atomic_inc(&sess->events);
		mutex_unlock(&sess->lock);
		wake_up_poll(&sess->wq, EPOLLHUP);
	}
	list_for_each_entry(sess, &dev->leaked, node) {
		mutex_lock(&sess->lock);
		dmagate_session_leak(sess);
		mutex_unlock(&sess->lock);
	}
	mutex_unlock(&dev->sessions_lock);

	dmagate_free_rings(dev, !stopped);
	ida_free(&dmagate_ida, dev->id);
	dev_info(&pdev->dev, "removed\n");
	dmagate_dev_put(dev);
}

static const struct pci_device_id dmagate_ids[] = {
	{ PCI_DEVICE(DMAGATE_PCI_VENDOR_ID, DMAGATE_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, dmagate_ids);

static struct pci_driver dmagate_driver = {
	.name = DRV_NAME,
	.id_table = dmagate_ids,
	.probe = dmagate_probe,
	.remove = dmagate_remove,
};

/*
 * A private pseudo filesystem: one inode, one address_space per session.
 * It has no .owner: mounting it would then pin this module for good; the
 * open files pin the module instead, and their inodes go before it does.
 */
static int dmagate_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, DMAGATE_FS_MAGIC) ? 0 : -ENOMEM;
}

static struct file_system_type dmagate_fs_type = {
	.name = DRV_NAME,
	.init_fs_context = dmagate_init_fs_context,
	.kill_sb = kill_anon_super,
};

/*
 * The ownership record goes to a trace instance of its own, enabled before
 * any device is probed: the rings a probe maps are part of it.
 */
static void dmagate_trace_start(void)
{
	dmagate_epoch = get_random_u32();
	if (!ownership_trace)
		return;
#ifdef DMAGATE_TRACE_ARRAY_SYSTEMS
	dmagate_trace = trace_array_get_by_name(DMAGATE_TRACE_INSTANCE, NULL);
#else	/* before 6.8 */
	dmagate_trace = trace_array_get_by_name(DMAGATE_TRACE_INSTANCE);
#endif
	if (!dmagate_trace) {
		pr_warn(DRV_NAME ": no trace instance " DMAGATE_TRACE_INSTANCE
			": ownership not recorded\n");
		return;
	}
	if (trace_array_set_clr_event(dmagate_trace, DRV_NAME, NULL, true)) {
		pr_warn(DRV_NAME ": cannot enable the ownership record\n");
		trace_array_put(dmagate_trace);
		dmagate_trace = NULL;
	}
}

static void dmagate_trace_stop(void)
{
	if (!dmagate_trace)
		return;
	trace_array_set_clr_event(dmagate_trace, DRV_NAME, NULL, false);
	trace_array_put(dmagate_trace);
	dmagate_trace = NULL;
}

static int __init dmagate_init(void)
{
	int ret;

	if (max_buffer < (64UL << 20) || max_buffer > DMAGATE_MAX_XFER ||
	    !PAGE_ALIGNED(max_buffer)) {
		pr_err(DRV_NAME ": max_buffer=%lu: use 64 MiB .. 256 MiB, whole pages\n",
		       max_buffer);
		return -EINVAL;
	}
	if (sysfs_streq(dma_map, "transfer")) {
		dmagate_map_per_xfer = true;
	} else if (!sysfs_streq(dma_map, "session")) {
		pr_err(DRV_NAME ": dma_map=%s: use session or transfer\n", dma_map);
		return -EINVAL;
	}
	/* Unbound: device removal needs no particular CPU (7.x asks to say so). */
	dmagate_wq = alloc_workqueue(DRV_NAME, WQ_UNBOUND, 0);
	if (!dmagate_wq)
		return -ENOMEM;
	dmagate_mnt = kern_mount(&dmagate_fs_type);
	if (IS_ERR(dmagate_mnt)) {
		ret = PTR_ERR(dmagate_mnt);
		goto err_destroy_wq;
	}
	dmagate_trace_start();
	dmagate_debugfs = debugfs_create_dir(DRV_NAME, NULL);
	debugfs_create_bool("unsafe_no_revoke", 0600, dmagate_debugfs, &dmagate_unsafe_no_revoke);
	ret = pci_register_driver(&dmagate_driver);
	if (ret)
		goto err_remove_debugfs;
	return 0;

err_remove_debugfs:
	debugfs_remove_recursive(dmagate_debugfs);
	dmagate_trace_stop();
	kern_unmount(dmagate_mnt);
err_destroy_wq:
	destroy_workqueue(dmagate_wq);
	return ret;
}

static void __exit dmagate_exit(void)
{
	pci_unregister_driver(&dmagate_driver);
	/* A device that fell off the bus may have queued its own removal. */
	destroy_workqueue(dmagate_wq);
	debugfs_remove_recursive(dmagate_debugfs);
	dmagate_trace_stop();
	kern_unmount(dmagate_mnt);
	ida_destroy(&dmagate_ida);
}

module_init(dmagate_init);
module_exit(dmagate_exit);

MODULE_DESCRIPTION("dmagate DMA test device driver: user buffers revoked during DMA");
MODULE_LICENSE("GPL");
