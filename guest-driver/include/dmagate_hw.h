/* SPDX-License-Identifier: GPL-2.0-only OR MIT */
/*
 * dmagate device: PCI identity, registers, ring formats and codes, as
 * docs/device.md defines them. Shared by the QEMU device model, the Linux
 * driver, the guest tools and (parsed) the Python tests, so it holds
 * nothing but integer #defines of the form "#define NAME VALUE".
 */
#ifndef DMAGATE_HW_H
#define DMAGATE_HW_H

#define DMAGATE_PCI_VENDOR_ID		0x1234
#define DMAGATE_PCI_DEVICE_ID		0xd6a7
#define DMAGATE_PCI_REVISION		0x01
#define DMAGATE_PCI_CLASS		0xff00

#define DMAGATE_REGS_BAR		0
#define DMAGATE_REGS_SIZE		0x1000
#define DMAGATE_MSIX_BAR		2
#define DMAGATE_MSIX_VECTORS		2
#define DMAGATE_MSIX_VEC_COMPLETION	0
#define DMAGATE_MSIX_VEC_ERROR		1

/* Registers: 32-bit, little-endian, aligned 32-bit access only. */
#define DMAGATE_REG_ID			0x000
#define DMAGATE_REG_VERSION		0x004
#define DMAGATE_REG_CAPS		0x008
#define DMAGATE_REG_MAX_XFER		0x00c
#define DMAGATE_REG_CTRL		0x010
#define DMAGATE_REG_STATUS		0x014
#define DMAGATE_REG_ERROR		0x018
#define DMAGATE_REG_ERROR_INDEX		0x01c
#define DMAGATE_REG_ERROR_ADDR_LO	0x020
#define DMAGATE_REG_ERROR_ADDR_HI	0x024
#define DMAGATE_REG_SQ_BASE_LO		0x030
#define DMAGATE_REG_SQ_BASE_HI		0x034
#define DMAGATE_REG_SQ_SIZE		0x038
#define DMAGATE_REG_SQ_TAIL		0x03c
#define DMAGATE_REG_SQ_HEAD		0x040
#define DMAGATE_REG_CQ_BASE_LO		0x050
#define DMAGATE_REG_CQ_BASE_HI		0x054
#define DMAGATE_REG_CQ_SIZE		0x058
#define DMAGATE_REG_CQ_HEAD		0x05c
#define DMAGATE_REG_CQ_TAIL		0x060
#define DMAGATE_REG_INT_STATUS		0x070
#define DMAGATE_REG_INT_MASK		0x074
#define DMAGATE_REG_INT_ACK		0x078
#define DMAGATE_REG_TIME_LO		0x080
#define DMAGATE_REG_TIME_HI		0x084
#define DMAGATE_REG_STAT_DESCRIPTORS	0x100
#define DMAGATE_REG_STAT_BYTES		0x108
#define DMAGATE_REG_STAT_INTERRUPTS	0x110
#define DMAGATE_REG_STAT_ERRORS		0x118
#define DMAGATE_REG_STAT_FAULTS		0x120

#define DMAGATE_ID_VALUE		0x47414d44	/* "DMAG" */
#define DMAGATE_VERSION_VALUE		0x00010002
#define DMAGATE_MAX_SEGMENTS		1024
#define DMAGATE_MAX_RING_ORDER		12
#define DMAGATE_MIN_RING_SIZE		2
#define DMAGATE_MAX_RING_SIZE		4096
#define DMAGATE_MAX_XFER		0x10000000
#define DMAGATE_CAPS_OP_FILL		(1U << 24)
#define DMAGATE_CAPS_OP_CHECKSUM	(1U << 25)
#define DMAGATE_CAPS_OP_TRANSFORM	(1U << 26)

#define DMAGATE_CTRL_ENABLE		(1U << 0)
#define DMAGATE_CTRL_RESET		(1U << 1)

#define DMAGATE_STATUS_ENABLED		(1U << 0)
#define DMAGATE_STATUS_BUSY		(1U << 1)
#define DMAGATE_STATUS_HALTED		(1U << 2)
#define DMAGATE_STATUS_STALLED		(1U << 3)

#define DMAGATE_INT_COMPLETION		(1U << 0)
#define DMAGATE_INT_ERROR		(1U << 1)

#define DMAGATE_RING_ALIGN		64

/* Descriptor: 32 bytes, little-endian. */
#define DMAGATE_DESC_SIZE		32
#define DMAGATE_DESC_OPCODE		0	/* u8 */
#define DMAGATE_DESC_FLAGS		1	/* u8 */
#define DMAGATE_DESC_RESERVED		2	/* u16, 0 */
#define DMAGATE_DESC_TAG		4	/* u32 */
#define DMAGATE_DESC_SG_ADDR		8	/* u64 */
#define DMAGATE_DESC_SG_COUNT		16	/* u32 */
#define DMAGATE_DESC_LENGTH		20	/* u32 */
#define DMAGATE_DESC_PARAM		24	/* u64 */
#define DMAGATE_DESC_F_INTERRUPT	(1U << 0)

#define DMAGATE_OP_FILL			1
#define DMAGATE_OP_CHECKSUM		2
#define DMAGATE_OP_TRANSFORM		3

/* Scatter-gather entry: 16 bytes, the list 16-byte aligned. */
#define DMAGATE_SG_SIZE			16
#define DMAGATE_SG_ADDR			0	/* u64 */
#define DMAGATE_SG_LEN			8	/* u32 */
#define DMAGATE_SG_RESERVED		12	/* u32, 0 */

/* Completion: 32 bytes. */
#define DMAGATE_CPL_SIZE		32
#define DMAGATE_CPL_TAG			0	/* u32 */
#define DMAGATE_CPL_STATUS		4	/* u16 */
#define DMAGATE_CPL_FLAGS		6	/* u16 */
#define DMAGATE_CPL_BYTES_DONE		8	/* u32 */
#define DMAGATE_CPL_CRC			12	/* u32 */
#define DMAGATE_CPL_TIMESTAMP		16	/* u64 */
#define DMAGATE_CPL_SQ_INDEX		24	/* u32 */
#define DMAGATE_CPL_RESERVED		28	/* u32 */
#define DMAGATE_CPL_F_PHASE		(1U << 0)

/* Completion status and ERROR register codes. */
#define DMAGATE_ST_OK			0
#define DMAGATE_ST_BAD_OPCODE		1
#define DMAGATE_ST_BAD_DESCRIPTOR	2
#define DMAGATE_ST_BAD_SG		3
#define DMAGATE_ST_BAD_LENGTH		4
#define DMAGATE_ST_DMA_ERROR		5
#define DMAGATE_ST_BUS_MASTER_OFF	6
#define DMAGATE_ST_SHORT		7
#define DMAGATE_ST_BAD_RING		8
#define DMAGATE_ST_BAD_INDEX		9
#define DMAGATE_ST_REG_LOCKED		10
#define DMAGATE_ST_BAD_ACCESS		11

/* FILL pattern: W(k) = mix64(seed ^ (k * DMAGATE_FILL_GOLDEN)). */
#define DMAGATE_FILL_GOLDEN		0x9e3779b97f4a7c15ULL

/* Fault property value meaning "every time". */
#define DMAGATE_FAULT_ALWAYS		0xffffffffU

/* Ranges of the device's QOM properties (datasheet section 7 and 8). */
#define DMAGATE_MAX_DELAY_NS		60000000000ULL
#define DMAGATE_MAX_BANDWIDTH_MBPS	1000000
#define DMAGATE_MAX_SPURIOUS		1024

/* Work one bottom half does at most before it yields to the main loop. */
#define DMAGATE_BH_BYTES		0x100000
#define DMAGATE_BH_DESCRIPTORS		64
#define DMAGATE_BH_SG_ENTRIES		1024

/* PCI power management capability: config-space offset. */
#define DMAGATE_PM_CAP_OFFSET		0x40

#endif /* DMAGATE_HW_H */
