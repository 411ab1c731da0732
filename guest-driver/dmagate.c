// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmagate: driver for the dmagate DMA test device.
 *
 * This first version binds the device, enables it and checks its ID and
 * version registers through BAR0 (docs/device.md); the mapping-revocation
 * protocol builds on it.
 */

#include <linux/module.h>
#include <linux/pci.h>

#include "dmagate_hw.h"

#define DRV_NAME "dmagate"

static int dmagate_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	void __iomem *regs;
	u32 ident, version;
	int ret;

	ret = pcim_enable_device(pdev);
	if (ret)
		return dev_err_probe(&pdev->dev, ret, "cannot enable device\n");

	ret = pcim_iomap_regions(pdev, BIT(0), DRV_NAME);
	if (ret)
		return dev_err_probe(&pdev->dev, ret, "cannot map BAR0\n");
	regs = pcim_iomap_table(pdev)[0];

	ident = ioread32(regs + DMAGATE_REG_ID);
	if (ident != DMAGATE_ID_VALUE)
		return dev_err_probe(&pdev->dev, -ENODEV,
				     "unexpected ID register 0x%08x\n", ident);
	version = ioread32(regs + DMAGATE_REG_VERSION);

	dev_info(&pdev->dev, "bound, device version %u.%u\n",
		 version >> 16, version & 0xffff);
	return 0;
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
};
module_pci_driver(dmagate_driver);

MODULE_DESCRIPTION("dmagate DMA test device driver");
MODULE_LICENSE("GPL");
