/*
 * dmagate: fault rules (see dmagate-faults.h)
 *
 * Copyright (c) 2026 The dmagate authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qapi/error.h"
#include "dmagate-faults.h"
#include "dmagate_hw.h"

static const char *const fault_names[DMAGATE_FAULT_COUNT] = {
    [DMAGATE_FAULT_DMA_ERROR] = "dma-error",
    [DMAGATE_FAULT_DROP_IRQ] = "drop-irq",
    [DMAGATE_FAULT_SPURIOUS_IRQ] = "spurious-irq",
    [DMAGATE_FAULT_DUPLICATE_COMPLETION] = "duplicate-completion",
    [DMAGATE_FAULT_CORRUPT] = "corrupt",
    [DMAGATE_FAULT_PARTIAL] = "partial",
    [DMAGATE_FAULT_STALL] = "stall",
    [DMAGATE_FAULT_LATE_WRITE] = "late-write",
    [DMAGATE_FAULT_STRAY_WRITE] = "stray-write",
    [DMAGATE_FAULT_DELAYED_IRQ] = "delayed-irq",
    [DMAGATE_FAULT_OUT_OF_ORDER] = "out-of-order",
    [DMAGATE_FAULT_WRONG_TAG] = "wrong-tag",
    [DMAGATE_FAULT_IGNORE_RESET] = "ignore-reset",
    [DMAGATE_FAULT_DEAD] = "dead",
    [DMAGATE_FAULT_IRQ_STORM] = "irq-storm",
};

static const char *const op_names[] = {
    [DMAGATE_OP_FILL] = "fill",
    [DMAGATE_OP_CHECKSUM] = "checksum",
    [DMAGATE_OP_TRANSFORM] = "transform",
};

#define DMAGATE_ALL_OPS ((1u << DMAGATE_OP_FILL) | \
                         (1u << DMAGATE_OP_CHECKSUM) | \
                         (1u << DMAGATE_OP_TRANSFORM))

/* 2^64 as a double, for probabilities as fractions of the draw's range. */
#define TWO_POW_64 18446744073709551616.0

const char *dmagate_fault_name(int fault)
{
    return fault_names[fault];
}

static bool rule_fault_ok(int fault)
{
    return fault >= 0 && fault < DMAGATE_FAULT_COUNTED &&
           fault != DMAGATE_FAULT_SPURIOUS_IRQ;
}

static bool parse_u64(const char *what, const char *text, uint64_t *out,
                      Error **errp)
{
    if (qemu_strtou64(text, NULL, 0, out) < 0) {
        error_setg(errp, "%s: '%s' is not a number", what, text);
        return false;
    }
    return true;
}

static bool parse_u32(const char *what, const char *text, uint32_t *out,
                      Error **errp)
{
    uint64_t value;

    if (!parse_u64(what, text, &value, errp)) {
        return false;
    }
    if (value > UINT32_MAX) {
        error_setg(errp, "%s: %s is out of range (at most %u)", what, text,
                   UINT32_MAX);
        return false;
    }
    *out = value;
    return true;
}

/* "N" or "A-B" */
static bool parse_range(const char *what, const char *text, uint32_t *min,
                        uint32_t *max, Error **errp)
{
    g_auto(GStrv) ends = g_strsplit(text, "-", 2);

    if (!parse_u32(what, ends[0], min, errp) ||
        !parse_u32(what, ends[1] ? ends[1] : ends[0], max, errp)) {
        return false;
    }
    if (*min > *max) {
        error_setg(errp, "%s: range %s is empty", what, text);
        return false;
    }
    return true;
}

static bool parse_ops(const char *text, uint8_t *ops, Error **errp)
{
    g_auto(GStrv) names = g_strsplit(text, "|", -1);

    *ops = 0;
    for (int i = 0; names[i]; i++) {
        int op;

        for (op = DMAGATE_OP_FILL; op <= DMAGATE_OP_TRANSFORM; op++) {
            if (!strcmp(names[i], op_names[op])) {
                break;
            }
        }
        if (op > DMAGATE_OP_TRANSFORM) {
            error_setg(errp, "op: '%s' is not fill, checksum or transform",
                       names[i]);
            return false;
        }
        *ops |= 1u << op;
    }
    return true;
}

static bool parse_probability(const char *text, DmagateRule *rule,
                              Error **errp)
{
    double p;

    if (qemu_strtod(text, NULL, &p) < 0 || !(p >= 0.0 && p <= 1.0)) {
        error_setg(errp, "probability: '%s' is not a number from 0 to 1",
                   text);
        return false;
    }
    rule->random = true;
    rule->threshold = p >= 1.0 ? UINT64_MAX : (uint64_t)(p * TWO_POW_64);
    return true;
}

static bool parse_param(DmagateRule *rule, const char *key, const char *value,
                        bool *seeded, Error **errp)
{
    if (!strcmp(key, "op")) {
        return parse_ops(value, &rule->ops, errp);
    } else if (!strcmp(key, "length")) {
        return parse_range(key, value, &rule->length_min, &rule->length_max,
                           errp);
    } else if (!strcmp(key, "sq-index")) {
        return parse_range(key, value, &rule->index_min, &rule->index_max,
                           errp);
    } else if (!strcmp(key, "skip")) {
        return parse_u64(key, value, &rule->skip, errp);
    } else if (!strcmp(key, "every")) {
        if (!parse_u64(key, value, &rule->every, errp)) {
            return false;
        }
        if (!rule->every) {
            error_setg(errp, "every: must be at least 1");
            return false;
        }
        return true;
    } else if (!strcmp(key, "probability")) {
        return parse_probability(value, rule, errp);
    } else if (!strcmp(key, "seed")) {
        *seeded = true;
        return parse_u64(key, value, &rule->seed, errp);
    } else if (!strcmp(key, "times")) {
        return parse_u64(key, value, &rule->times, errp);
    }
    error_setg(errp, "unknown parameter '%s' (op, length, sq-index, skip, "
               "every, probability, seed, times)", key);
    return false;
}

/*
 * "FAULT[:KEY=VALUE]..." (colons, not commas: the text must pass through
 * -device's comma-separated options unescaped)
 */
static bool parse_rule(const char *text, DmagateRule *rule, Error **errp)
{
    g_auto(GStrv) parts = g_strsplit(text, ":", -1);
    bool seeded = false;
    int fault;

    *rule = (DmagateRule) {
        .length_max = UINT32_MAX,
        .index_max = UINT32_MAX,
        .every = 1,
    };
    for (fault = 0; fault < DMAGATE_FAULT_COUNT; fault++) {
        if (rule_fault_ok(fault) && !strcmp(parts[0], fault_names[fault])) {
            break;
        }
    }
    if (fault == DMAGATE_FAULT_COUNT) {
        error_setg(errp, "'%s' is not a fault (dma-error, partial, corrupt, "
                   "stall, duplicate-completion, drop-irq, late-write, "
                   "stray-write, delayed-irq, out-of-order, wrong-tag)",
                   parts[0]);
        return false;
    }
    rule->fault = fault;

    for (int i = 1; parts[i]; i++) {
        g_auto(GStrv) kv = g_strsplit(parts[i], "=", 2);

        if (!kv[0] || !*kv[0]) {
            continue;
        }
        if (!kv[1] || !*kv[1]) {
            error_setg(errp, "'%s' needs a value (KEY=VALUE)", kv[0]);
            return false;
        }
        if (!parse_param(rule, kv[0], kv[1], &seeded, errp)) {
            return false;
        }
    }
    if (rule->random && rule->every != 1) {
        error_setg(errp, "every and probability do not go together");
        return false;
    }
    if (rule->random && !seeded) {
        /* Recorded in the rule's canonical form, so the run replays. */
        rule->seed = (uint64_t)g_random_int() << 32 | g_random_int();
    }
    rule->prng = rule->seed;
    return true;
}

bool dmagate_rules_parse(const char *text, DmagateRuleSet *set, Error **errp)
{
    g_auto(GStrv) rules = g_strsplit(text, ";", -1);
    DmagateRuleSet parsed = { 0 };

    for (int i = 0; rules[i]; i++) {
        g_autofree char *rule = g_strstrip(g_strdup(rules[i]));
        Error *err = NULL;

        if (!*rule) {
            continue;
        }
        if (parsed.count == DMAGATE_MAX_RULES) {
            error_setg(errp, "fault-rules: at most %d rules",
                       DMAGATE_MAX_RULES);
            return false;
        }
        if (!parse_rule(rule, &parsed.rule[parsed.count], &err)) {
            error_propagate_prepend(errp, err, "fault-rules: rule %u '%s': ",
                                    parsed.count + 1, rule);
            return false;
        }
        parsed.count++;
    }
    *set = parsed;
    return true;
}

static void format_range(GString *out, const char *key, uint32_t min,
                         uint32_t max)
{
    if (min == 0 && max == UINT32_MAX) {
        return;
    }
    if (min == max) {
        g_string_append_printf(out, ":%s=%" PRIu32, key, min);
    } else {
        g_string_append_printf(out, ":%s=%" PRIu32 "-%" PRIu32, key, min, max);
    }
}

char *dmagate_rule_format(const DmagateRule *rule)
{
    GString *out = g_string_new(fault_names[rule->fault]);
    const char *sep = ":op=";

    if (rule->ops && rule->ops != DMAGATE_ALL_OPS) {
        for (int op = DMAGATE_OP_FILL; op <= DMAGATE_OP_TRANSFORM; op++) {
            if (rule->ops & (1u << op)) {
                g_string_append_printf(out, "%s%s", sep, op_names[op]);
                sep = "|";
            }
        }
    }
    format_range(out, "length", rule->length_min, rule->length_max);
    format_range(out, "sq-index", rule->index_min, rule->index_max);
    g_string_append_printf(out, ":skip=%" PRIu64, rule->skip);
    if (rule->random) {
        if (rule->threshold == UINT64_MAX) {
            g_string_append(out, ":probability=1");
        } else {
            g_string_append_printf(out, ":probability=%.17g",
                                   rule->threshold / TWO_POW_64);
        }
        g_string_append_printf(out, ":seed=%" PRIu64, rule->seed);
    } else {
        g_string_append_printf(out, ":every=%" PRIu64, rule->every);
    }
    if (rule->times) {
        g_string_append_printf(out, ":times=%" PRIu64, rule->times);
    }
    return g_string_free(out, false);
}

char *dmagate_rules_format(const DmagateRuleSet *set)
{
    GString *out = g_string_new("");

    for (uint32_t i = 0; i < set->count; i++) {
        g_autofree char *rule = dmagate_rule_format(&set->rule[i]);

        g_string_append_printf(out, "%s%s", i ? ";" : "", rule);
    }
    return g_string_free(out, false);
}

/* splitmix64: the rule's own generator, so a seed replays the same draws. */
static uint64_t rule_draw(DmagateRule *rule)
{
    uint64_t z = (rule->prng += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static bool rule_matches(const DmagateRule *rule, int fault, uint8_t opcode,
                         uint32_t length, uint32_t index)
{
    return rule->fault == fault &&
           (!rule->ops || (opcode < 8 && rule->ops & (1u << opcode))) &&
           length >= rule->length_min && length <= rule->length_max &&
           index >= rule->index_min && index <= rule->index_max;
}

static bool rule_fires(DmagateRule *rule)
{
    uint64_t n;
    bool fire;

    rule->matched++;
    if (rule->matched <= rule->skip ||
        (rule->times && rule->fired >= rule->times)) {
        return false;
    }
    n = rule->matched - rule->skip;
    if (rule->random) {
        uint64_t draw = rule_draw(rule);

        fire = rule->threshold == UINT64_MAX || draw < rule->threshold;
    } else {
        fire = n % rule->every == 0;
    }
    rule->fired += fire;
    return fire;
}

bool dmagate_rules_fire(DmagateRuleSet *set, int fault, uint8_t opcode,
                        uint32_t length, uint32_t index, int *rule_index)
{
    bool fired = false;

    *rule_index = -1;
    for (uint32_t i = 0; i < set->count && i < DMAGATE_MAX_RULES; i++) {
        DmagateRule *rule = &set->rule[i];

        /* Every matching rule counts the descriptor, fired or not. */
        if (rule_matches(rule, fault, opcode, length, index) &&
            rule_fires(rule) && !fired) {
            fired = true;
            *rule_index = i;
        }
    }
    return fired;
}

const char *dmagate_rules_check(const DmagateRuleSet *set)
{
    if (set->count > DMAGATE_MAX_RULES) {
        return "number of fault rules";
    }
    for (uint32_t i = 0; i < set->count; i++) {
        const DmagateRule *rule = &set->rule[i];

        if (!rule_fault_ok(rule->fault) || rule->ops & ~DMAGATE_ALL_OPS ||
            rule->length_min > rule->length_max ||
            rule->index_min > rule->index_max || !rule->every ||
            rule->matched < rule->fired) {
            return "fault rule";
        }
    }
    return NULL;
}

const VMStateDescription vmstate_dmagate_rule = {
    .name = "dmagate-rule",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (const VMStateField[]) {
        VMSTATE_UINT8(fault, DmagateRule),
        VMSTATE_UINT8(ops, DmagateRule),
        VMSTATE_UINT32(length_min, DmagateRule),
        VMSTATE_UINT32(length_max, DmagateRule),
        VMSTATE_UINT32(index_min, DmagateRule),
        VMSTATE_UINT32(index_max, DmagateRule),
        VMSTATE_UINT64(skip, DmagateRule),
        VMSTATE_UINT64(every, DmagateRule),
        VMSTATE_BOOL(random, DmagateRule),
        VMSTATE_UINT64(threshold, DmagateRule),
        VMSTATE_UINT64(seed, DmagateRule),
        VMSTATE_UINT64(prng, DmagateRule),
        VMSTATE_UINT64(times, DmagateRule),
        VMSTATE_UINT64(matched, DmagateRule),
        VMSTATE_UINT64(fired, DmagateRule),
        VMSTATE_END_OF_LIST()
    },
};
