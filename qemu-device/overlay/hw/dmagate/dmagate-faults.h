/*
 * dmagate: fault rules
 *
 * A rule says when one per-descriptor fault fires: for descriptors that
 * match its filters (opcode, length range, SQ index range), it lets the
 * first @skip pass, then fires on every @every-th match, or with a
 * probability drawn from a recorded seed, at most @times times. The
 * syntax is in docs/device.md section 8.
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_DMAGATE_FAULTS_H
#define HW_DMAGATE_FAULTS_H

#include "migration/vmstate.h"

/*
 * Every fault the device can inject. Those before DMAGATE_FAULT_COUNTED
 * have a count property ("fault-NAME": the next N); all of those but
 * spurious-irq hit one descriptor and can have rules. The rest are modes
 * of the whole device, each with a property of its own.
 */
enum {
    DMAGATE_FAULT_DMA_ERROR,
    DMAGATE_FAULT_DROP_IRQ,
    DMAGATE_FAULT_SPURIOUS_IRQ,     /* not per descriptor: no rules */
    DMAGATE_FAULT_DUPLICATE_COMPLETION,
    DMAGATE_FAULT_CORRUPT,
    DMAGATE_FAULT_PARTIAL,
    DMAGATE_FAULT_STALL,
    DMAGATE_FAULT_LATE_WRITE,
    DMAGATE_FAULT_STRAY_WRITE,
    DMAGATE_FAULT_DELAYED_IRQ,
    DMAGATE_FAULT_OUT_OF_ORDER,
    DMAGATE_FAULT_WRONG_TAG,
    DMAGATE_FAULT_COUNTED,
    DMAGATE_FAULT_IGNORE_RESET = DMAGATE_FAULT_COUNTED,
    DMAGATE_FAULT_DEAD,
    DMAGATE_FAULT_IRQ_STORM,
    DMAGATE_FAULT_COUNT,
};

#define DMAGATE_MAX_RULES 16

typedef struct DmagateRule {
    uint8_t fault;
    uint8_t ops;            /* a bit per opcode (1 << op); 0 for any */
    uint32_t length_min;
    uint32_t length_max;
    uint32_t index_min;
    uint32_t index_max;
    uint64_t skip;
    uint64_t every;         /* counting mode: every Nth match past skip */
    bool random;            /* probability mode instead */
    uint64_t threshold;     /* probability * 2^64; UINT64_MAX: certain */
    uint64_t seed;
    uint64_t prng;
    uint64_t times;         /* 0: no limit */
    uint64_t matched;
    uint64_t fired;
} DmagateRule;

typedef struct DmagateRuleSet {
    uint32_t count;
    DmagateRule rule[DMAGATE_MAX_RULES];
} DmagateRuleSet;

/* The fault's name in rules and (after "fault-") in its QOM property. */
const char *dmagate_fault_name(int fault);

/* Parse @text into @set (replacing it); false and @errp on a bad rule. */
bool dmagate_rules_parse(const char *text, DmagateRuleSet *set, Error **errp);

/* One rule, or all of them, in the canonical syntax (seeds spelled out). */
char *dmagate_rule_format(const DmagateRule *rule);
char *dmagate_rules_format(const DmagateRuleSet *set);

/*
 * A descriptor that @fault could affect: count it against every rule for
 * @fault it matches; true if one of them fires (@rule_index: the first).
 */
bool dmagate_rules_fire(DmagateRuleSet *set, int fault, uint8_t opcode,
                        uint32_t length, uint32_t index, int *rule_index);

/* Why a rule set from a migration stream is invalid, or NULL. */
const char *dmagate_rules_check(const DmagateRuleSet *set);

extern const VMStateDescription vmstate_dmagate_rule;

#endif /* HW_DMAGATE_FAULTS_H */
