// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmagate_splat_test: breaks the kernel on request, so that the test bench
 * can prove it notices. Never load it outside a test guest.
 *
 *   echo warn > /sys/kernel/debug/dmagate_splat_test/trigger
 *
 * warn:  WARN()
 * bug:   BUG() (an oops; the writer is killed)
 * null:  a NULL pointer dereference (an oops)
 * uaf:   a read of freed memory (KASAN)
 * lock:  two mutexes taken in both orders (lockdep)
 * sleep: might_sleep() under a spinlock (DEBUG_ATOMIC_SLEEP)
 * dma:   a DMA unmap of another size than was mapped, on the dmagate
 *        device (DMA-API debug)
 * leak:  memory allocated and forgotten (kmemleak)
 * alloc: one kmalloc(), freed again; fails the write with -ENOMEM if the
 *        allocation failed (a target for fault injection)
 * page:  the same with one page from the page allocator
 */

#include <linux/debugfs.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "../include/dmagate_hw.h"

static struct dentry *splat_dir;
static DEFINE_MUTEX(splat_lock_a);
static DEFINE_MUTEX(splat_lock_b);
static DEFINE_SPINLOCK(splat_spinlock);

static noinline int splat_test_warn(void)
{
	WARN(1, "dmagate_splat_test: deliberate warning\n");
	return 0;
}

static noinline int splat_test_bug(void)
{
	BUG();
	return 0;
}

static noinline int splat_test_null(void)
{
	int *ptr = NULL;

	/* The compiler must not see, and drop, the NULL access. */
	OPTIMIZER_HIDE_VAR(ptr);
	pr_info("dmagate_splat_test: reading through NULL: %d\n", *ptr);
	return 0;
}

static noinline int splat_test_uaf(void)
{
	char *buf = kmalloc(64, GFP_KERNEL);

	if (!buf)
		return -ENOMEM;
	kfree(buf);
	OPTIMIZER_HIDE_VAR(buf);
	pr_info("dmagate_splat_test: freed byte %d\n", READ_ONCE(buf[8]));
	return 0;
}

static noinline int splat_test_lock_inversion(void)
{
	mutex_lock(&splat_lock_a);
	mutex_lock(&splat_lock_b);
	mutex_unlock(&splat_lock_b);
	mutex_unlock(&splat_lock_a);

	mutex_lock(&splat_lock_b);
	mutex_lock(&splat_lock_a);
	mutex_unlock(&splat_lock_a);
	mutex_unlock(&splat_lock_b);
	return 0;
}

static noinline int splat_test_atomic_sleep(void)
{
	spin_lock(&splat_spinlock);
	might_sleep();
	spin_unlock(&splat_spinlock);
	return 0;
}

static noinline int splat_test_dma_misuse(void)
{
	struct pci_dev *pdev;
	dma_addr_t addr;
	void *buf;
	int ret = 0;

	pdev = pci_get_device(DMAGATE_PCI_VENDOR_ID, DMAGATE_PCI_DEVICE_ID, NULL);
	if (!pdev)
		return -ENODEV;
	buf = kmalloc(64, GFP_KERNEL);
	if (!buf) {
		ret = -ENOMEM;
		goto put_dev;
	}
	addr = dma_map_single(&pdev->dev, buf, 64, DMA_TO_DEVICE);
	if (dma_mapping_error(&pdev->dev, addr)) {
		ret = -EIO;
		goto free_buf;
	}
	dma_unmap_single(&pdev->dev, addr, 32, DMA_TO_DEVICE);
free_buf:
	kfree(buf);
put_dev:
	pci_dev_put(pdev);
	return ret;
}

/* A plain kmalloc(), as a driver would leak it. */
static noinline int splat_test_leak(void)
{
	void *lost = kmalloc(128, GFP_KERNEL);

	OPTIMIZER_HIDE_VAR(lost);
	return lost ? 0 : -ENOMEM;
}

static noinline int splat_test_alloc(void)
{
	void *buf = kmalloc(256, GFP_KERNEL);

	if (!buf)
		return -ENOMEM;
	kfree(buf);
	return 0;
}

static noinline int splat_test_page(void)
{
	struct page *page = alloc_page(GFP_KERNEL);

	if (!page)
		return -ENOMEM;
	__free_page(page);
	return 0;
}

static const struct {
	const char *name;
	int (*fn)(void);
} splat_triggers[] = {
	{ "warn", splat_test_warn },
	{ "bug", splat_test_bug },
	{ "null", splat_test_null },
	{ "uaf", splat_test_uaf },
	{ "lock", splat_test_lock_inversion },
	{ "sleep", splat_test_atomic_sleep },
	{ "dma", splat_test_dma_misuse },
	{ "leak", splat_test_leak },
	{ "alloc", splat_test_alloc },
	{ "page", splat_test_page },
};

static ssize_t trigger_write(struct file *file, const char __user *ubuf,
			     size_t len, loff_t *ppos)
{
	char cmd[16];
	size_t n = min(len, sizeof(cmd) - 1);
	int i, ret;

	if (copy_from_user(cmd, ubuf, n))
		return -EFAULT;
	cmd[n] = '\0';
	strim(cmd);

	for (i = 0; i < ARRAY_SIZE(splat_triggers); i++) {
		if (!strcmp(cmd, splat_triggers[i].name)) {
			ret = splat_triggers[i].fn();
			return ret ? ret : len;
		}
	}
	return -EINVAL;
}

static const struct file_operations trigger_fops = {
	.owner = THIS_MODULE,
	.write = trigger_write,
};

static int __init splat_test_init(void)
{
	splat_dir = debugfs_create_dir("dmagate_splat_test", NULL);
	debugfs_create_file("trigger", 0200, splat_dir, NULL, &trigger_fops);
	return 0;
}

static void __exit splat_test_exit(void)
{
	debugfs_remove(splat_dir);
}

module_init(splat_test_init);
module_exit(splat_test_exit);

MODULE_DESCRIPTION("dmagate test-only module that triggers kernel splats");
MODULE_LICENSE("GPL");
