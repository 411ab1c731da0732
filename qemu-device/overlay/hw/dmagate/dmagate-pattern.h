/*
 * dmagate: the FILL pattern (docs/device.md, dmagate_hw.h)
 *
 * Word k of a FILL with seed S is mix64(S ^ (k * DMAGATE_FILL_GOLDEN)),
 * stored little-endian. In zero-delay mode computing it bounds the
 * device's data rate, so on x86 hosts the words are made eight (AVX-512)
 * or four (AVX2) at a time; every host gets the same bytes.
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_DMAGATE_PATTERN_H
#define HW_DMAGATE_PATTERN_H

/* The pattern for transfer offsets [@offset, @offset + @len) into @buf. */
void dmagate_pattern(uint8_t *buf, uint64_t offset, size_t len, uint64_t seed);

#endif
