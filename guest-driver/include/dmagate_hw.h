/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * dmagate device: PCI identity and register layout, shared by the QEMU
 * device model, the Linux driver and the guest tools.
 *
 * Until the dmagate device lands, the bench runs against QEMU's "edu"
 * device as a stand-in; only its identity and ID register are used.
 */
#ifndef DMAGATE_HW_H
#define DMAGATE_HW_H

#define DMAGATE_PCI_VENDOR_ID	0x1234
#define DMAGATE_PCI_DEVICE_ID	0x11e8

/* BAR0, 32-bit: identification register (edu: 0xRRrr00ed) */
#define DMAGATE_REG_ID		0x00
#define DMAGATE_ID_MAGIC_MASK	0x000000ffU
#define DMAGATE_ID_MAGIC	0x000000edU

#endif /* DMAGATE_HW_H */
