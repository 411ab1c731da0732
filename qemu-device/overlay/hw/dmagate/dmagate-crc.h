/*
 * dmagate: CRC-32 (IEEE 802.3, zlib's crc32) of the data the device moves
 *
 * zlib's table-driven CRC runs at about a third of a host memcpy, so in
 * zero-delay mode it bounded the device's data rate. On an x86 host with
 * PCLMULQDQ the bulk is folded with carry-less multiplies instead (64
 * bytes a step, then a Barrett reduction), in one 512-bit register where
 * the host has VPCLMULQDQ and AVX-512; what is left over, and every other
 * host, goes to zlib. Same results as zlib's crc32(), to the bit.
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_DMAGATE_CRC_H
#define HW_DMAGATE_CRC_H

/* As zlib's crc32(@crc, @buf, @len), with crc32(0, NULL, 0) == 0. */
uint32_t dmagate_crc32(uint32_t crc, const uint8_t *buf, size_t len);

#endif
