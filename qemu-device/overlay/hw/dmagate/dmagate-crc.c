/*
 * dmagate: CRC-32 of the data the device moves (see dmagate-crc.h)
 *
 * The folding follows Intel's "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ Instruction" (2009), in the bit-reflected
 * form that IEEE 802.3's CRC takes; the constants are powers of x modulo
 * the polynomial, named as in that paper.
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <zlib.h>
#include "dmagate-crc.h"

#ifdef HOST_X86_64
#include "host/cpuinfo.h"
#include <immintrin.h>

#define FOLD_BYTES 64

/* Fold @acc forward over 2^k bits with @k (low: x^(k+32), high: x^(k-32)). */
static inline __attribute__((target("pclmul,sse2")))
__m128i fold(__m128i acc, __m128i k, __m128i next)
{
    __m128i lo = _mm_clmulepi64_si128(acc, k, 0x00);
    __m128i hi = _mm_clmulepi64_si128(acc, k, 0x11);

    return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
}

#define K1K2 _mm_set_epi64x(0x1c6e41596ULL, 0x154442bd4ULL)

/*
 * Four 128-bit lanes, each folded over the 64-byte steps so far, and the
 * @len (a multiple of 16) bytes after them: to the raw CRC.
 */
static __attribute__((target("pclmul,sse2")))
uint32_t crc32_reduce(__m128i x0, __m128i x1, __m128i x2, __m128i x3,
                      const uint8_t *buf, size_t len)
{
    const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009eULL, 0x1751997d0ULL);
    const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124ULL);
    const __m128i poly_mu = _mm_set_epi64x(0x1f7011641ULL, 0x1db710641ULL);
    const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
    __m128i t;

    x0 = fold(x0, k3k4, x1);
    x0 = fold(x0, k3k4, x2);
    x0 = fold(x0, k3k4, x3);
    for (; len >= 16; buf += 16, len -= 16) {
        x0 = fold(x0, k3k4, _mm_loadu_si128((const __m128i *)buf));
    }

    /* 128 bits to 64, then to 32 plus the 32 bits Barrett reduces. */
    t = _mm_clmulepi64_si128(x0, k3k4, 0x10);
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 8), t);
    t = _mm_clmulepi64_si128(_mm_and_si128(x0, mask32), k5, 0x00);
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 4), t);

    t = _mm_clmulepi64_si128(_mm_and_si128(x0, mask32), poly_mu, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, mask32), poly_mu, 0x00);
    x0 = _mm_xor_si128(x0, t);
    return _mm_cvtsi128_si32(_mm_srli_si128(x0, 4));
}

/*
 * The raw (not inverted) reflected CRC of @len bytes, @len a multiple of
 * 16 and at least FOLD_BYTES: four lanes in four registers.
 */
static __attribute__((target("pclmul,sse2")))
uint32_t crc32_fold(uint32_t crc, const uint8_t *buf, size_t len)
{
    const __m128i k1k2 = K1K2;
    __m128i x0, x1, x2, x3;

    x0 = _mm_loadu_si128((const __m128i *)buf);
    x1 = _mm_loadu_si128((const __m128i *)(buf + 16));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 32));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 48));
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128(crc));
    buf += FOLD_BYTES;
    len -= FOLD_BYTES;

    for (; len >= FOLD_BYTES; buf += FOLD_BYTES, len -= FOLD_BYTES) {
        x0 = fold(x0, k1k2, _mm_loadu_si128((const __m128i *)buf));
        x1 = fold(x1, k1k2, _mm_loadu_si128((const __m128i *)(buf + 16)));
        x2 = fold(x2, k1k2, _mm_loadu_si128((const __m128i *)(buf + 32)));
        x3 = fold(x3, k1k2, _mm_loadu_si128((const __m128i *)(buf + 48)));
    }
    return crc32_reduce(x0, x1, x2, x3, buf, len);
}

/*
 * The same four lanes in one 512-bit register, folded by VPCLMULQDQ: one
 * multiply pair per 64 bytes instead of four, twice the rate here.
 */
static __attribute__((target("avx512f,vpclmulqdq,pclmul")))
uint32_t crc32_fold_avx512(uint32_t crc, const uint8_t *buf, size_t len)
{
    const __m512i k1k2 = _mm512_broadcast_i32x4(K1K2);
    __m512i acc;

    acc = _mm512_xor_si512(_mm512_loadu_si512(buf),
                           _mm512_castsi128_si512(_mm_cvtsi32_si128(crc)));
    buf += FOLD_BYTES;
    len -= FOLD_BYTES;

    for (; len >= FOLD_BYTES; buf += FOLD_BYTES, len -= FOLD_BYTES) {
        /* 0x96: the three-way XOR of the two products and the data. */
        __m512i lo = _mm512_clmulepi64_epi128(acc, k1k2, 0x00);
        __m512i hi = _mm512_clmulepi64_epi128(acc, k1k2, 0x11);

        acc = _mm512_ternarylogic_epi64(lo, hi, _mm512_loadu_si512(buf), 0x96);
    }
    return crc32_reduce(_mm512_extracti32x4_epi32(acc, 0),
                        _mm512_extracti32x4_epi32(acc, 1),
                        _mm512_extracti32x4_epi32(acc, 2),
                        _mm512_extracti32x4_epi32(acc, 3), buf, len);
}

/* cpuinfo's AVX512F includes the OS's saving of the 512-bit state. */
static bool crc32_has_vpclmul(void)
{
    return (cpuinfo & CPUINFO_AVX512F) && __builtin_cpu_supports("vpclmulqdq");
}

uint32_t dmagate_crc32(uint32_t crc, const uint8_t *buf, size_t len)
{
    size_t bulk = len & ~(size_t)15;

    if ((cpuinfo & CPUINFO_PCLMUL) && bulk >= FOLD_BYTES) {
        /* zlib's CRC is the raw one with the state inverted on each side. */
        crc = crc32_has_vpclmul() ? ~crc32_fold_avx512(~crc, buf, bulk)
                                  : ~crc32_fold(~crc, buf, bulk);
        buf += bulk;
        len -= bulk;
    }
    return len ? crc32(crc, buf, len) : crc;
}

#else

uint32_t dmagate_crc32(uint32_t crc, const uint8_t *buf, size_t len)
{
    return crc32(crc, buf, len);
}

#endif
