// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmagatectl: the guest-side tool of the dmagate test bench.
 *
 *   dmagatectl list     print every dmagate device on the PCI bus and the
 *                       driver bound to it; exit 1 if there is none
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dmagate_hw.h"

#define PCI_DEVICES "/sys/bus/pci/devices"

static long read_hex(const char *dev, const char *attr)
{
	char path[PATH_MAX];
	long value = -1;
	FILE *f;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/%s", dev, attr);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%lx", &value) != 1)
		value = -1;
	fclose(f);
	return value;
}

static void driver_of(const char *dev, char *name, size_t size)
{
	char path[PATH_MAX], target[PATH_MAX];
	ssize_t n;
	char *base;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/driver", dev);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0) {
		snprintf(name, size, "(none)");
		return;
	}
	target[n] = '\0';
	base = strrchr(target, '/');
	snprintf(name, size, "%s", base ? base + 1 : target);
}

static int cmd_list(void)
{
	struct dirent *entry;
	char driver[PATH_MAX];
	int found = 0;
	DIR *dir;

	dir = opendir(PCI_DEVICES);
	if (!dir) {
		fprintf(stderr, "dmagatectl: %s: %s\n", PCI_DEVICES, strerror(errno));
		return 2;
	}
	while ((entry = readdir(dir))) {
		if (entry->d_name[0] == '.')
			continue;
		if (read_hex(entry->d_name, "vendor") != DMAGATE_PCI_VENDOR_ID ||
		    read_hex(entry->d_name, "device") != DMAGATE_PCI_DEVICE_ID)
			continue;
		driver_of(entry->d_name, driver, sizeof(driver));
		printf("%s %04x:%04x driver=%s\n", entry->d_name,
		       DMAGATE_PCI_VENDOR_ID, DMAGATE_PCI_DEVICE_ID, driver);
		found++;
	}
	closedir(dir);
	return found ? 0 : 1;
}

static void print_help(FILE *out)
{
	fprintf(out, "usage: dmagatectl list\n");
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "list"))
		return cmd_list();
	if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
		print_help(stdout);
		return 0;
	}
	print_help(stderr);
	return 2;
}
