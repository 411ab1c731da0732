/*
 * dmagate: the FILL pattern (see dmagate-pattern.h)
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "dmagate_hw.h"
#include "dmagate-pattern.h"

#define MIX_MUL1 0xbf58476d1ce4e5b9ULL
#define MIX_MUL2 0x94d049bb133111ebULL

static inline uint64_t mix64(uint64_t z)
{
    z ^= z >> 30;
    z *= MIX_MUL1;
    z ^= z >> 27;
    z *= MIX_MUL2;
    z ^= z >> 31;
    return z;
}

/* The pattern's word for transfer offsets [8 * @k, 8 * @k + 8). */
static inline uint64_t pattern_word(uint64_t seed, uint64_t k)
{
    return mix64(seed ^ (k * DMAGATE_FILL_GOLDEN));
}

/*
 * @words whole words from word @k on into @buf; returns how many were
 * written (a vector loop leaves a remainder shorter than its width).
 */
typedef size_t (*PatternWords)(uint8_t *buf, size_t words, uint64_t seed,
                               uint64_t k);

static size_t pattern_words_scalar(uint8_t *buf, size_t words, uint64_t seed,
                                   uint64_t k)
{
    uint64_t mixed_k = k * DMAGATE_FILL_GOLDEN;

    for (size_t i = 0; i < words; i++, mixed_k += DMAGATE_FILL_GOLDEN) {
        stq_le_p(buf + 8 * i, mix64(seed ^ mixed_k));
    }
    return words;
}

#ifdef HOST_X86_64
#include "host/cpuinfo.h"
#include <immintrin.h>

/* x86 is little-endian: a vector store lays the words out as stq_le_p. */

static __attribute__((target("avx512f,avx512dq")))
size_t pattern_words_avx512(uint8_t *buf, size_t words, uint64_t seed,
                            uint64_t k)
{
    const __m512i step = _mm512_set1_epi64(8 * DMAGATE_FILL_GOLDEN);
    const __m512i vseed = _mm512_set1_epi64(seed);
    const __m512i mul1 = _mm512_set1_epi64(MIX_MUL1);
    const __m512i mul2 = _mm512_set1_epi64(MIX_MUL2);
    __m512i mixed_k = _mm512_mullo_epi64(
        _mm512_set1_epi64(DMAGATE_FILL_GOLDEN),
        _mm512_add_epi64(_mm512_set1_epi64(k),
                         _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7)));
    size_t i;

    for (i = 0; words - i >= 8; i += 8) {
        __m512i z = _mm512_xor_si512(vseed, mixed_k);

        z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 30));
        z = _mm512_mullo_epi64(z, mul1);
        z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 27));
        z = _mm512_mullo_epi64(z, mul2);
        z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
        _mm512_storeu_si512(buf + 8 * i, z);
        mixed_k = _mm512_add_epi64(mixed_k, step);
    }
    return i;
}

/* AVX2 has no 64-bit multiply: (hi:lo) * c from three 32x32->64 ones. */
static inline __attribute__((target("avx2")))
__m256i mul64_avx2(__m256i a, __m256i c, __m256i c_hi)
{
    __m256i cross = _mm256_add_epi64(
        _mm256_mul_epu32(_mm256_srli_epi64(a, 32), c),
        _mm256_mul_epu32(a, c_hi));

    return _mm256_add_epi64(_mm256_mul_epu32(a, c),
                            _mm256_slli_epi64(cross, 32));
}

static __attribute__((target("avx2")))
size_t pattern_words_avx2(uint8_t *buf, size_t words, uint64_t seed,
                          uint64_t k)
{
    const uint64_t first = k * DMAGATE_FILL_GOLDEN;
    const __m256i step = _mm256_set1_epi64x(4 * DMAGATE_FILL_GOLDEN);
    const __m256i vseed = _mm256_set1_epi64x(seed);
    const __m256i mul1 = _mm256_set1_epi64x(MIX_MUL1);
    const __m256i mul1_hi = _mm256_set1_epi64x(MIX_MUL1 >> 32);
    const __m256i mul2 = _mm256_set1_epi64x(MIX_MUL2);
    const __m256i mul2_hi = _mm256_set1_epi64x(MIX_MUL2 >> 32);
    __m256i mixed_k = _mm256_setr_epi64x(first,
                                         first + DMAGATE_FILL_GOLDEN,
                                         first + 2 * DMAGATE_FILL_GOLDEN,
                                         first + 3 * DMAGATE_FILL_GOLDEN);
    size_t i;

    for (i = 0; words - i >= 4; i += 4) {
        __m256i z = _mm256_xor_si256(vseed, mixed_k);

        z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 30));
        z = mul64_avx2(z, mul1, mul1_hi);
        z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 27));
        z = mul64_avx2(z, mul2, mul2_hi);
        z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
        _mm256_storeu_si256((__m256i *)(buf + 8 * i), z);
        mixed_k = _mm256_add_epi64(mixed_k, step);
    }
    return i;
}

static PatternWords pattern_words_best(void)
{
    const unsigned avx512 = CPUINFO_AVX512F | CPUINFO_AVX512DQ;

    if ((cpuinfo & avx512) == avx512) {
        return pattern_words_avx512;
    }
    if (cpuinfo & CPUINFO_AVX2) {
        return pattern_words_avx2;
    }
    return pattern_words_scalar;
}

#else

static PatternWords pattern_words_best(void)
{
    return pattern_words_scalar;
}

#endif

/*
 * The bytes before the first whole word and after the last one singly,
 * the words between by the widest loop this host has; the scalar one
 * finishes what a vector loop leaves.
 */
void dmagate_pattern(uint8_t *buf, uint64_t offset, size_t len, uint64_t seed)
{
    size_t head = MIN(len, (8 - offset % 8) % 8), words, done, i;
    uint64_t k;

    for (i = 0; i < head; i++) {
        buf[i] = pattern_word(seed, (offset + i) / 8) >>
                 (8 * ((offset + i) % 8));
    }
    k = (offset + head) / 8;
    words = (len - head) / 8;
    done = pattern_words_best()(buf + head, words, seed, k);
    pattern_words_scalar(buf + head + 8 * done, words - done, seed, k + done);
    k += words;
    for (i = head + 8 * words; i < len; i++) {
        buf[i] = pattern_word(seed, k) >> (8 * ((offset + i) % 8));
    }
}
