// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmagate_splat_test: breaks the kernel on request, so that the test bench
 * can prove it notices. Never load it outside a test guest.
 *
 *   echo warn > /sys/kernel/debug/dmagate_splat_test/trigger
 *
 * warn: WARN(); bug: BUG() (an oops, the writer is killed); null: a NULL
 * pointer dereference (an oops).
 */

#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/string.h>
#include <linux/uaccess.h>

static struct dentry *splat_dir;

static noinline void splat_test_warn(void)
{
	WARN(1, "dmagate_splat_test: deliberate warning\n");
}

static noinline void splat_test_bug(void)
{
	BUG();
}

static noinline void splat_test_null(void)
{
	/* volatile: the compiler must not see, and drop, the NULL access */
	int *volatile ptr = NULL;

	pr_info("dmagate_splat_test: reading through NULL: %d\n", *ptr);
}

static ssize_t trigger_write(struct file *file, const char __user *ubuf,
			     size_t len, loff_t *ppos)
{
	char cmd[16];
	size_t n = min(len, sizeof(cmd) - 1);

	if (copy_from_user(cmd, ubuf, n))
		return -EFAULT;
	cmd[n] = '\0';
	strim(cmd);

	if (!strcmp(cmd, "warn"))
		splat_test_warn();
	else if (!strcmp(cmd, "bug"))
		splat_test_bug();
	else if (!strcmp(cmd, "null"))
		splat_test_null();
	else
		return -EINVAL;
	return len;
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
