// SPDX-License-Identifier: GPL-2.0-only
/*
 * dmagatectl: the guest-side tool of the dmagate test bench.
 *
 *   dmagatectl list                  every dmagate PCI function and its driver
 *   dmagatectl info                  DMAGATE_IOC_INFO of the device
 *   dmagatectl xfer OP               one verified transfer per repetition
 *   dmagatectl touch OP --touch read|write [--at OFF] [--outside OFF]
 *                    [--via self|second|child|split|thread]
 *                                    touch a page while the device owns it
 *   dmagatectl efault OP             kernel copies into device-owned pages
 *   dmagatectl pin                   try to pin the mapping (must fail)
 *   dmagatectl errnos                every documented bad call, in order
 *   dmagatectl wait-hup OP [--idle]  wait for the device to go away
 *   dmagatectl hold OP [--no-child] [--close]
 *                                    submit, then sleep until killed
 *   dmagatectl cycle [--verify]      ownership round-trip latency
 *   dmagatectl stress                touchers in a thread and a child
 *   dmagatectl regrant OP --at OFF   which touches fault after a transfer
 *   dmagatectl drain [--from FILE]   what a trace pipe holds, without waiting
 *   dmagatectl selftest              check the tool's own reference code
 *
 * OP is fill, checksum or transform. Options (any order after the
 * command): -d DEV, -s SIZE, -o OFF, -l LEN, -p PARAM,
 * -w poll|select|epoll|read|ioctl, -t MS, -n COUNT, --fail-at STEP.
 *
 * Output is one line of space-separated key=value pairs per event. Exit
 * status: 0 success, 1 verification failed or unexpected outcome, 2 usage
 * error, 3 a syscall failed unexpectedly (errno=NAME on stdout, the message
 * on stderr), 4 a transfer completed with an error. Every wait is bounded
 * by -t except hold's pause() and wait-hup's poll(). The driver's contract
 * is docs/driver.md; the reference data (FILL pattern, CRC-32, the
 * TRANSFORM result) is computed here, independently of the driver.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/io_uring.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dmagate_hw.h"
#include "uapi/dmagate.h"

#define PCI_DEVICES		"/sys/bus/pci/devices"
#define GUARD_BYTE		0xa5
#define TOUCH_VALUE		0x5a
#define OUTSIDE_VALUE		0x3c
#define SPOT_WORDS		64
#define NR_IO_URING_SETUP	425
#define NR_IO_URING_REGISTER	427
#define OWNERSHIP_TRACE_PIPE	"/sys/kernel/tracing/instances/dmagate/trace_pipe"

static const char usage[] =
"usage: dmagatectl COMMAND [OP] [options]\n"
"commands:\n"
"  list                    dmagate PCI functions and their drivers\n"
"  info                    version, max_buffer, device_version, irq_mode\n"
"  xfer OP                 ALLOC, mmap, SUBMIT, wait, verify (-n times)\n"
"  touch OP --touch read|write [--at OFF] [--outside OFF]\n"
"           [--via self|second|child|split|thread]\n"
"                          touch the buffer while the device owns it\n"
"  efault OP               read()/write() into device-owned pages\n"
"  pin                     vmsplice, io_uring buffers, process_vm_readv\n"
"  errnos                  every documented bad call, one line each\n"
"  wait-hup OP [--idle]    submit, poll until the device goes away\n"
"  hold OP [--no-child] [--close]\n"
"                          submit, then pause() until killed (--close:\n"
"                          close and munmap mid-DMA, print closed, exit)\n"
"  cycle [--verify] [--protect driver|none|mprotect] [--vmas N]\n"
"        [--children N]    SUBMIT/poll/read/touch of every page: latency\n"
"                          and its parts (medians; the driver's debugfs\n"
"                          last_cycle for the kernel's share). --protect\n"
"                          none|mprotect need unsafe_no_revoke set; --vmas\n"
"                          maps the buffer in N pieces, --children forks N\n"
"                          processes that map it too\n"
"  stress                  FILL cycles under toucher thread and child\n"
"  regrant OP --at OFF     one transfer over the buffer; touch OFF, then\n"
"                          every page: print the offsets that faulted\n"
"  drain [--from FILE]     copy what FILE (default the driver's ownership\n"
"                          trace pipe) holds to stdout; never blocks\n"
"  selftest                check the pattern, CRC-32 and parsers\n"
"OP: fill, checksum, transform\n"
"options:\n"
"  -d DEV      device node (default /dev/dmagate0)\n"
"  -s SIZE     buffer size (default 1M; suffixes K M G, 0x hex)\n"
"  -o OFF      submit offset (default 0)\n"
"  -l LEN      submit length (default size - offset)\n"
"  -p PARAM    FILL seed / TRANSFORM key (default 0x0123456789abcdef)\n"
"  -w MODE     wait with poll (default), select, epoll, read or ioctl\n"
"  -t MS       wait timeout in ms (default 20000)\n"
"  -n COUNT    repetitions for xfer, cycle and stress (default 1)\n"
"  --fail-at open|alloc|mmap|submit\n"
"              set /proc/thread-self/make-it-fail around that step only;\n"
"              if it fails print failed_step=STEP errno=NAME, exit 3\n"
"  --recheck MS\n"
"              xfer: MS ms after each verify, verify the buffer again and\n"
"              print recheck=same or recheck=changed (a DMA after the\n"
"              completion, e.g. the device's late-write fault); exit 1\n"
"  --fail-nth N\n"
"              write N to /proc/thread-self/fail-nth before open(): the\n"
"              Nth allocation the kernel's fault filters let through fails;\n"
"              at exit print fail_nth_left=K (K > 0: nothing was failed)\n"
"exit: 0 ok, 1 verification failed, 2 usage, 3 syscall failed,\n"
"      4 transfer completed with an error\n";

enum wait_mode { WAIT_POLL, WAIT_SELECT, WAIT_EPOLL, WAIT_READ, WAIT_IOCTL };
enum via { VIA_SELF, VIA_SECOND, VIA_CHILD, VIA_SPLIT, VIA_THREAD };
enum outside_state { OUT_NONE, OUT_OK, OUT_SIGBUS, OUT_MISMATCH };

struct opts {
	const char *dev;
	uint64_t size, offset, length, param, at, outside;
	int length_set, at_set, outside_set;
	int op;
	int wait_mode;
	long timeout_ms;
	long count;
	int touch_write;
	int via;
	int idle, no_child, verify, close_mid;
	int fail_at;		/* STEP_*: arm make-it-fail around that step */
	uint64_t fail_nth;	/* --fail-nth: 0, or the allocation to fail */
	long recheck_ms;	/* --recheck: 0, or verify again this much later */
	const char *from;	/* --from: the file drain reads */
	int protect;		/* cycle --protect: PROTECT_* */
	long vmas;		/* cycle --vmas: map the buffer in this many pieces */
	long children;		/* cycle --children: forked processes mapping it too */
};

/* cycle --protect: who keeps the program off the buffer during DMA. */
enum protect { PROTECT_DRIVER, PROTECT_NONE, PROTECT_MPROTECT };

/* The session steps --fail-at can make fail (fault injection). */
enum step { STEP_NONE, STEP_OPEN, STEP_ALLOC, STEP_MMAP, STEP_SUBMIT };
static const char *const step_names[] = { "none", "open", "alloc", "mmap",
					   "submit" };

struct session {
	int fd;
	uint8_t *buf;
	uint64_t size;
};

struct fault {
	int hit;
	int code;
	uintptr_t addr;
};

static uint64_t page_size;
static uint32_t crc_table[256];

/* ---- names ------------------------------------------------------------- */

static const struct {
	int value;
	const char *name;
} errno_names[] = {
	{ ENOTTY, "ENOTTY" }, { EFAULT, "EFAULT" }, { EINVAL, "EINVAL" },
	{ E2BIG, "E2BIG" }, { EEXIST, "EEXIST" }, { EFBIG, "EFBIG" },
	{ ENOMEM, "ENOMEM" }, { ENOBUFS, "ENOBUFS" }, { ERANGE, "ERANGE" },
	{ EBUSY, "EBUSY" }, { EAGAIN, "EAGAIN" }, { ENODEV, "ENODEV" },
	{ ETIMEDOUT, "ETIMEDOUT" }, { ENOENT, "ENOENT" }, { EINTR, "EINTR" },
	{ EIO, "EIO" }, { EACCES, "EACCES" }, { EPERM, "EPERM" },
	{ ENXIO, "ENXIO" },
};

/* The name of errno value @e ("0" for success, the number if unknown). */
static const char *errname(int e)
{
	static __thread char number[16];
	size_t i;

	if (e == 0)
		return "0";
	for (i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
		if (errno_names[i].value == e)
			return errno_names[i].name;
	snprintf(number, sizeof(number), "%d", e);
	return number;
}

static const char *bus_code_name(int code)
{
	static __thread char number[16];

	switch (code) {
	case BUS_ADRALN:
		return "BUS_ADRALN";
	case BUS_ADRERR:
		return "BUS_ADRERR";
	case BUS_OBJERR:
		return "BUS_OBJERR";
	case BUS_MCEERR_AR:
		return "BUS_MCEERR_AR";
	case BUS_MCEERR_AO:
		return "BUS_MCEERR_AO";
	}
	snprintf(number, sizeof(number), "%d", code);
	return number;
}

/* poll/epoll event bits joined by '|' ("0" if none). */
static const char *events_str(unsigned int ev, char *out, size_t n)
{
	static const struct {
		unsigned int bit;
		const char *name;
	} bits[] = {
		{ POLLIN, "IN" }, { POLLPRI, "PRI" }, { POLLOUT, "OUT" },
		{ POLLERR, "ERR" }, { POLLHUP, "HUP" }, { POLLNVAL, "NVAL" },
		{ POLLRDHUP, "RDHUP" },
	};
	size_t i, len = 0;

	out[0] = '\0';
	for (i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
		if (!(ev & bits[i].bit))
			continue;
		len += snprintf(out + len, n - len, "%s%s", len ? "|" : "",
				bits[i].name);
		if (len >= n)
			break;
	}
	if (!out[0])
		snprintf(out, n, "0");
	return out;
}

/* A syscall failed where it must not: exit 3. */
static void __attribute__((noreturn)) die_sys(const char *what)
{
	int e = errno;

	fprintf(stderr, "dmagatectl: %s: %s\n", what, strerror(e));
	printf("errno=%s\n", errname(e));
	fflush(NULL);
	exit(3);
}

/* ---- the independent reference ----------------------------------------- */

static uint64_t mix64(uint64_t z)
{
	z ^= z >> 30;
	z *= 0xbf58476d1ce4e5b9ULL;
	z ^= z >> 27;
	z *= 0x94d049bb133111ebULL;
	z ^= z >> 31;
	return z;
}

/* Word k of the FILL pattern of @seed (bytes little-endian). */
static uint64_t fill_word(uint64_t seed, uint64_t k)
{
	return mix64(seed ^ (k * DMAGATE_FILL_GOLDEN));
}

static uint8_t fill_byte(uint64_t seed, uint64_t i)
{
	return fill_word(seed, i / 8) >> (8 * (i % 8));
}

/* The known input written before CHECKSUM / TRANSFORM, by buffer offset. */
static uint8_t input_byte(uint64_t j)
{
	return (j * 131 + 7) & 0xff;
}

static void crc32_init(void)
{
	uint32_t c;
	int n, k;

	for (n = 0; n < 256; n++) {
		c = n;
		for (k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
		crc_table[n] = c;
	}
}

/* zlib's crc32(): start with 0, feed the running value back in. */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/*
 * Byte i of the transfer (buffer offset off + i) after op has run; @word
 * caches the FILL word, recomputed on every 8-byte boundary.
 */
static uint8_t expected_byte(int op, uint64_t param, uint64_t off, uint64_t i,
			     uint64_t *word)
{
	switch (op) {
	case DMAGATE_XFER_FILL:
		if (i % 8 == 0)
			*word = fill_word(param, i / 8);
		return *word >> (8 * (i % 8));
	case DMAGATE_XFER_TRANSFORM:
		return input_byte(off + i) ^ (uint8_t)(param >> (8 * (i % 8)));
	}
	return input_byte(off + i);
}

/* ---- parsing ------------------------------------------------------------- */

/* Decimal or 0x hex; with @suffixes also K, M, G (powers of 1024). */
static int parse_u64(const char *s, uint64_t *out, int suffixes)
{
	int base = 10, shift = 0;
	unsigned long long v;
	char *end;

	if (!isdigit((unsigned char)s[0]))
		return -1;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		base = 16;
	errno = 0;
	v = strtoull(s, &end, base);
	if (errno || end == s)
		return -1;
	if (suffixes && *end) {
		switch (tolower((unsigned char)*end)) {
		case 'k':
			shift = 10;
			break;
		case 'm':
			shift = 20;
			break;
		case 'g':
			shift = 30;
			break;
		default:
			return -1;
		}
		end++;
		if (v > (UINT64_MAX >> shift))
			return -1;
		v <<= shift;
	}
	if (*end)
		return -1;
	*out = v;
	return 0;
}

static int parse_long(const char *s, long *out)
{
	uint64_t v;

	if (parse_u64(s, &v, 0) || v > LONG_MAX)
		return -1;
	*out = v;
	return 0;
}

static int parse_op(const char *s)
{
	if (!strcmp(s, "fill"))
		return DMAGATE_XFER_FILL;
	if (!strcmp(s, "checksum"))
		return DMAGATE_XFER_CHECKSUM;
	if (!strcmp(s, "transform"))
		return DMAGATE_XFER_TRANSFORM;
	return 0;
}

static int parse_word(const char *s, const char *const *words, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (!strcmp(s, words[i]))
			return i;
	return -1;
}

static int usage_error(const char *what, const char *arg)
{
	fprintf(stderr, "dmagatectl: %s%s%s (dmagatectl -h for help)\n", what,
		arg ? ": " : "", arg ? arg : "");
	return 2;
}

/* One option with its value at argv[*i + 1]; returns 0, or 2 on error. */
static int parse_option(struct opts *o, int argc, char **argv, int *i)
{
	static const char *const waits[] = { "poll", "select", "epoll",
					     "read", "ioctl" };
	static const char *const vias[] = { "self", "second", "child",
					    "split", "thread" };
	static const char *const touches[] = { "read", "write" };
	static const char *const protects[] = { "driver", "none", "mprotect" };
	const char *opt = argv[*i], *val;
	int ok = 0;

	if (!strcmp(opt, "--idle"))
		return o->idle = 1, 0;
	if (!strcmp(opt, "--no-child"))
		return o->no_child = 1, 0;
	if (!strcmp(opt, "--verify"))
		return o->verify = 1, 0;
	if (!strcmp(opt, "--close"))
		return o->close_mid = 1, 0;
	if (*i + 1 >= argc)
		return usage_error("missing value for", opt);
	val = argv[++*i];
	if (!strcmp(opt, "-d")) {
		o->dev = val;
	} else if (!strcmp(opt, "-s")) {
		ok = parse_u64(val, &o->size, 1) || !o->size;
	} else if (!strcmp(opt, "-o")) {
		ok = parse_u64(val, &o->offset, 1);
	} else if (!strcmp(opt, "-l")) {
		ok = parse_u64(val, &o->length, 1);
		o->length_set = 1;
	} else if (!strcmp(opt, "-p")) {
		ok = parse_u64(val, &o->param, 0);
	} else if (!strcmp(opt, "-w")) {
		o->wait_mode = parse_word(val, waits, 5);
		ok = o->wait_mode < 0;
	} else if (!strcmp(opt, "-t")) {
		ok = parse_long(val, &o->timeout_ms) || o->timeout_ms > INT_MAX / 2;
	} else if (!strcmp(opt, "-n")) {
		ok = parse_long(val, &o->count) || o->count < 1;
	} else if (!strcmp(opt, "--touch")) {
		o->touch_write = parse_word(val, touches, 2);
		ok = o->touch_write < 0;
	} else if (!strcmp(opt, "--via")) {
		o->via = parse_word(val, vias, 5);
		ok = o->via < 0;
	} else if (!strcmp(opt, "--at")) {
		ok = parse_u64(val, &o->at, 1);
		o->at_set = 1;
	} else if (!strcmp(opt, "--outside")) {
		ok = parse_u64(val, &o->outside, 1);
		o->outside_set = 1;
	} else if (!strcmp(opt, "--recheck")) {
		ok = parse_long(val, &o->recheck_ms) || o->recheck_ms < 1 ||
		     o->recheck_ms > INT_MAX / 1000;
	} else if (!strcmp(opt, "--from")) {
		o->from = val;
	} else if (!strcmp(opt, "--protect")) {
		o->protect = parse_word(val, protects, 3);
		ok = o->protect < 0;
	} else if (!strcmp(opt, "--vmas")) {
		ok = parse_long(val, &o->vmas) || o->vmas < 1 || o->vmas > 4096;
	} else if (!strcmp(opt, "--children")) {
		ok = parse_long(val, &o->children) || o->children < 0 || o->children > 64;
	} else if (!strcmp(opt, "--fail-nth")) {
		ok = parse_u64(val, &o->fail_nth, 0) || !o->fail_nth || o->fail_nth > INT_MAX;
	} else if (!strcmp(opt, "--fail-at")) {
		o->fail_at = parse_word(val, step_names, 5);
		ok = o->fail_at <= STEP_NONE;
	} else {
		return usage_error("unknown option", opt);
	}
	return ok ? usage_error("bad value", val) : 0;
}

/* @takes_op: 0 no OP, 1 OP required, 2 OP optional (default fill). */
static int parse_args(struct opts *o, int argc, char **argv, int takes_op)
{
	int i, ret;

	for (i = 2; i < argc; i++) {
		if (argv[i][0] == '-') {
			ret = parse_option(o, argc, argv, &i);
			if (ret)
				return ret;
			continue;
		}
		if (!takes_op || o->op)
			return usage_error("unexpected argument", argv[i]);
		o->op = parse_op(argv[i]);
		if (!o->op)
			return usage_error("unknown OP", argv[i]);
	}
	if (takes_op == 1 && !o->op)
		return usage_error("missing OP", NULL);
	if (!o->op)
		o->op = DMAGATE_XFER_FILL;
	if (!o->length_set)
		o->length = o->offset < o->size ? o->size - o->offset : 0;
	if (takes_op && (o->offset > o->size || o->length > o->size - o->offset))
		return usage_error("range leaves the buffer", NULL);
	if (!o->at_set)
		o->at = o->offset;
	if (o->at >= o->size || (o->outside_set && o->outside >= o->size))
		return usage_error("--at/--outside past the buffer", NULL);
	return 0;
}

/* ---- SIGBUS-safe accesses ------------------------------------------------ */

static __thread sigjmp_buf fault_jmp;
static __thread volatile sig_atomic_t fault_armed;
static __thread struct fault fault_seen;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
	struct sigaction dfl;

	(void)ctx;
	if (!fault_armed) {
		memset(&dfl, 0, sizeof(dfl));
		dfl.sa_handler = SIG_DFL;
		sigemptyset(&dfl.sa_mask);
		sigaction(sig, &dfl, NULL);
		raise(sig);
		return;
	}
	fault_armed = 0;
	fault_seen.hit = 1;
	fault_seen.code = si->si_code;
	fault_seen.addr = (uintptr_t)si->si_addr;
	siglongjmp(fault_jmp, 1);
}

/* Run fn(arg) with SIGBUS turned into a jump back here; 1 if it fired. */
static int guarded(void (*fn)(void *), void *arg, struct fault *f)
{
	if (sigsetjmp(fault_jmp, 1)) {
		*f = fault_seen;
		return 1;
	}
	memset(&fault_seen, 0, sizeof(fault_seen));
	fault_armed = 1;
	fn(arg);
	fault_armed = 0;
	memset(f, 0, sizeof(*f));
	return 0;
}

struct access {
	volatile uint8_t *byte;
	volatile uint64_t *word;
	int write;
	uint64_t value;
};

static void access_fn(void *arg)
{
	struct access *a = arg;

	if (a->word)
		a->value = *a->word;
	else if (a->write)
		*a->byte = a->value;
	else
		a->value = *a->byte;
}

/* A 1-byte volatile read (returns value in *v) or write of *v. */
/* Read one byte of every page: the first touch of the whole range. */
static uint64_t touch_pages(const uint8_t *buf, uint64_t size)
{
	uint64_t sum = 0, off;

	for (off = 0; off < size; off += page_size)
		sum += *(const volatile uint8_t *)(buf + off);
	return sum;
}

static int touch_byte(uint8_t *p, int write, uint8_t *v, struct fault *f)
{
	struct access a = { .byte = p, .write = write, .value = *v };
	int hit = guarded(access_fn, &a, f);

	if (!hit)
		*v = a.value;
	return hit;
}

static int read_word(const uint8_t *p, uint64_t *v, struct fault *f)
{
	struct access a = { .word = (volatile uint64_t *)p };
	int hit = guarded(access_fn, &a, f);

	*v = le64toh(a.value);
	return hit;
}

/* ---- bounded waits ------------------------------------------------------- */

static volatile sig_atomic_t timer_fired;

static void on_alarm(int sig)
{
	(void)sig;
	timer_fired = 1;
}

/* SIGALRM (repeating, so a blocking call cannot miss it) after @ms. */
static void timer_arm(long ms)
{
	struct itimerval it = { { 0, 100000 }, { 0, 0 } };

	if (ms < 1)
		ms = 1;
	it.it_value.tv_sec = ms / 1000;
	it.it_value.tv_usec = (ms % 1000) * 1000;
	timer_fired = 0;
	if (setitimer(ITIMER_REAL, &it, NULL))
		die_sys("setitimer");
}

static void timer_disarm(void)
{
	struct itimerval it = { { 0, 0 }, { 0, 0 } };

	if (setitimer(ITIMER_REAL, &it, NULL))
		die_sys("setitimer");
}

/* After a call bounded by timer_arm(): EINTR from our own timer is ETIMEDOUT. */
static void timed_end(long ret)
{
	int e = errno;

	timer_disarm();
	if (ret < 0 && e == EINTR && timer_fired)
		e = ETIMEDOUT;
	errno = e;
}

/* read() bounded by @ms. */
static ssize_t timed_read(int fd, void *buf, size_t n, long ms)
{
	ssize_t ret;

	timer_arm(ms);
	ret = read(fd, buf, n);
	timed_end(ret);
	return ret;
}

static int timed_ioctl(int fd, unsigned long req, void *arg, long ms)
{
	int ret;

	timer_arm(ms);
	ret = ioctl(fd, req, arg);
	timed_end(ret);
	return ret;
}

/* pthread_create with SIGALRM blocked in the new thread. */
static void spawn_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
	sigset_t set, old;
	int rc;

	sigemptyset(&set);
	sigaddset(&set, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	rc = pthread_create(t, NULL, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		errno = rc;
		die_sys("pthread_create");
	}
}

static pid_t fork_child(void)
{
	pid_t parent = getpid(), pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0)
		die_sys("fork");
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(0);
	}
	return pid;
}

/* ---- the session --------------------------------------------------------- */

static int fail_fd = -1;

/*
 * --fail-at: set /proc/thread-self/make-it-fail just around @step (the file
 * is opened beforehand, so only the step itself can take the failure).
 */
static void step_arm(const struct opts *o, int step, int on)
{
	if (o->fail_at != step)
		return;
	if (fail_fd < 0) {
		fail_fd = open("/proc/thread-self/make-it-fail", O_WRONLY | O_CLOEXEC);
		if (fail_fd < 0)
			die_sys("/proc/thread-self/make-it-fail");
	}
	if (pwrite(fail_fd, on ? "1" : "0", 1, 0) != 1)
		die_sys("make-it-fail");
}

/* A session step failed: with --fail-at say which, then exit 3. */
static void __attribute__((noreturn)) step_failed(const struct opts *o, int step,
						   const char *what)
{
	int e = errno;

	if (o->fail_at == step) {
		fprintf(stderr, "dmagatectl: %s: %s\n", what, strerror(e));
		printf("failed_step=%s errno=%s\n", step_names[step], errname(e));
		exit(3);
	}
	die_sys(what);
}

static int open_dev(const struct opts *o)
{
	int fd = open(o->dev, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		die_sys(o->dev);
	return fd;
}

static int alloc_buffer(int fd, uint64_t length, uint32_t flags)
{
	struct dmagate_alloc a = {
		.size = sizeof(a), .flags = flags, .length = length,
	};

	return ioctl(fd, DMAGATE_IOC_ALLOC, &a);
}

static uint8_t *map_buffer(int fd, uint64_t length)
{
	void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	if (p == MAP_FAILED)
		die_sys("mmap");
	return p;
}

static int fail_nth_fd = -1;

/* At exit: how much of --fail-nth was left (0: a failure was injected). */
static void fail_nth_report(void)
{
	char text[32];
	ssize_t n = pread(fail_nth_fd, text, sizeof(text) - 1, 0);

	if (n < 0)
		return;
	text[n] = '\0';
	printf("fail_nth_left=%ld\n", strtol(text, NULL, 10));
	fflush(stdout);
}

/* --fail-nth: from here on, the Nth filtered allocation of this thread fails. */
static void fail_nth_arm(const struct opts *o)
{
	char text[32];
	int len;

	if (!o->fail_nth || fail_nth_fd >= 0)
		return;
	fail_nth_fd = open("/proc/thread-self/fail-nth", O_RDWR | O_CLOEXEC);
	if (fail_nth_fd < 0)
		die_sys("/proc/thread-self/fail-nth");
	len = snprintf(text, sizeof(text), "%llu", (unsigned long long)o->fail_nth);
	if (atexit(fail_nth_report) || pwrite(fail_nth_fd, text, len, 0) != len)
		die_sys("fail-nth");
}

/* open, ALLOC(size), mmap the whole buffer. */
static void session_open(struct session *s, const struct opts *o)
{
	void *p;
	int ret;

	fail_nth_arm(o);
	step_arm(o, STEP_OPEN, 1);
	s->fd = open(o->dev, O_RDWR | O_CLOEXEC);
	step_arm(o, STEP_OPEN, 0);
	if (s->fd < 0)
		step_failed(o, STEP_OPEN, o->dev);
	s->size = o->size;
	step_arm(o, STEP_ALLOC, 1);
	ret = alloc_buffer(s->fd, s->size, 0);
	step_arm(o, STEP_ALLOC, 0);
	if (ret)
		step_failed(o, STEP_ALLOC, "DMAGATE_IOC_ALLOC");
	step_arm(o, STEP_MMAP, 1);
	p = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	step_arm(o, STEP_MMAP, 0);
	if (p == MAP_FAILED)
		step_failed(o, STEP_MMAP, "mmap");
	s->buf = p;
}

static int submit(int fd, int op, uint64_t off, uint64_t len, uint64_t param,
		  uint64_t *seq)
{
	struct dmagate_submit sub = {
		.size = sizeof(sub), .op = op, .offset = off, .length = len,
		.param = param,
	};

	if (ioctl(fd, DMAGATE_IOC_SUBMIT, &sub))
		return -1;
	*seq = sub.seq;
	return 0;
}

static uint64_t submit_or_die(const struct session *s, const struct opts *o)
{
	uint64_t seq;
	int ret;

	step_arm(o, STEP_SUBMIT, 1);
	ret = submit(s->fd, o->op, o->offset, o->length, o->param, &seq);
	step_arm(o, STEP_SUBMIT, 0);
	if (ret)
		step_failed(o, STEP_SUBMIT, "DMAGATE_IOC_SUBMIT");
	return seq;
}

/* WAIT ioctl, bounded by our timer too; fills *c on success. */
static int wait_ioctl(int fd, uint64_t seq, int64_t timeout_ns, long ms,
		      struct dmagate_completion *c)
{
	struct dmagate_wait w = {
		.size = sizeof(w), .seq = seq, .timeout_ns = timeout_ns,
	};

	if (timed_ioctl(fd, DMAGATE_IOC_WAIT, &w, ms))
		return -1;
	*c = w.completion;
	return 0;
}

static int read_record(int fd, struct dmagate_completion *c, long ms)
{
	ssize_t n = timed_read(fd, c, sizeof(*c), ms);

	if (n < 0)
		return -1;
	if (n != sizeof(*c)) {
		fprintf(stderr, "dmagatectl: read: %zd bytes, not a record\n", n);
		errno = EIO;
		return -1;
	}
	return 0;
}

/*
 * Readiness by poll, select or epoll; 0, or -1 with errno (ETIMEDOUT).
 * Prints revents= (ready= for select) unless @quiet.
 */
static int wait_readable(int fd, const struct opts *o, int quiet)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	struct epoll_event ev = { .events = EPOLLIN };
	struct timeval tv;
	char names[64];
	fd_set rd;
	int n, ep;

	if (o->wait_mode == WAIT_SELECT) {
		FD_ZERO(&rd);
		FD_SET(fd, &rd);
		tv.tv_sec = o->timeout_ms / 1000;
		tv.tv_usec = (o->timeout_ms % 1000) * 1000;
		n = select(fd + 1, &rd, NULL, NULL, &tv);
		if (n > 0 && !quiet)
			printf("ready=%d\n", FD_ISSET(fd, &rd) ? 1 : 0);
	} else if (o->wait_mode == WAIT_EPOLL) {
		ep = epoll_create1(EPOLL_CLOEXEC);
		if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
			die_sys("epoll");
		n = epoll_wait(ep, &ev, 1, o->timeout_ms);
		close(ep);
		if (n > 0 && !quiet)
			printf("revents=%s\n", events_str(ev.events, names, sizeof(names)));
	} else {
		n = poll(&pfd, 1, o->timeout_ms);
		if (n > 0 && !quiet)
			printf("revents=%s\n", events_str(pfd.revents, names, sizeof(names)));
	}
	if (n == 0)
		errno = ETIMEDOUT;
	return n > 0 ? 0 : -1;
}

/* Wait for transfer @seq the -w way and take its record. */
static int wait_record(int fd, const struct opts *o, uint64_t seq,
		       struct dmagate_completion *c)
{
	switch (o->wait_mode) {
	case WAIT_IOCTL:
		return wait_ioctl(fd, seq, (int64_t)o->timeout_ms * 1000000,
				  o->timeout_ms + 2000, c);
	case WAIT_READ:
		return read_record(fd, c, o->timeout_ms);
	}
	if (wait_readable(fd, o, 0))
		return -1;
	return read_record(fd, c, o->timeout_ms);
}

/* wait_record, or exit: 1 on timeout, 3 on any other failure. */
static void wait_or_exit(const struct session *s, const struct opts *o,
			 uint64_t seq, struct dmagate_completion *c)
{
	if (!wait_record(s->fd, o, seq, c))
		return;
	if (errno != ETIMEDOUT)
		die_sys("wait");
	printf("seq=%" PRIu64 " wait=timeout timeout_ms=%ld\n", seq, o->timeout_ms);
	exit(1);
}

/* ---- preparing and verifying data ------------------------------------- */

struct region {
	uint8_t *buf;
	uint64_t size, off, len, param;
	int op;
	/* results of check_fn */
	int data_ok, outside_ok;
	uint64_t bad_offset;
	uint32_t crc;
};

static void prepare_fn(void *arg)
{
	struct region *r = arg;
	uint64_t j;

	memset(r->buf, GUARD_BYTE, r->size);
	if (r->op == DMAGATE_XFER_FILL)
		return;
	for (j = r->off; j < r->off + r->len; j++)
		r->buf[j] = input_byte(j);
}

static void check_fn(void *arg)
{
	struct region *r = arg;
	uint64_t i, j, word = 0, start, end;
	uint8_t e;

	r->data_ok = 1;
	r->crc = 0;
	for (i = 0; i < r->len; i++) {
		e = expected_byte(r->op, r->param, r->off, i, &word);
		r->crc = crc32_update(r->crc, &e, 1);
		if (r->data_ok && r->buf[r->off + i] != e) {
			r->data_ok = 0;
			r->bad_offset = r->off + i;
		}
	}
	start = r->off & ~(page_size - 1);
	end = (r->off + r->len + page_size - 1) & ~(page_size - 1);
	r->outside_ok = 1;
	for (j = 0; j < r->size; j++) {
		if (j == start)
			j = end;
		if (j < r->size && r->buf[j] != GUARD_BYTE) {
			r->outside_ok = 0;
			break;
		}
	}
}

static void region_init(struct region *r, const struct session *s,
			const struct opts *o)
{
	memset(r, 0, sizeof(*r));
	r->buf = s->buf;
	r->size = s->size;
	r->off = o->offset;
	r->len = o->length;
	r->param = o->param;
	r->op = o->op;
}

/* Guard bytes and input into the buffer; exit 1 if that faults. */
static void prepare(const struct session *s, const struct opts *o)
{
	struct region r;
	struct fault f;

	region_init(&r, s, o);
	if (!guarded(prepare_fn, &r, &f))
		return;
	printf("prepare=SIGBUS addr_offset=0x%" PRIx64 "\n",
	       (uint64_t)(f.addr - (uintptr_t)s->buf));
	exit(1);
}

/*
 * Check the record and the data of transfer @seq and print the xfer line.
 * Returns 0 verified, 1 not verified, 4 the record carries an error.
 */
static int report_xfer(const struct session *s, const struct opts *o,
		       uint64_t seq, const struct dmagate_completion *c)
{
	struct region r;
	struct fault f;
	const char *verified = "yes";
	char extra[160] = "";
	size_t n = 0;
	int ret = 0;

	region_init(&r, s, o);
	if (guarded(check_fn, &r, &f)) {
		n += snprintf(extra + n, sizeof(extra) - n,
			      " verify_sigbus=0x%" PRIx64,
			      (uint64_t)(f.addr - (uintptr_t)s->buf));
		r.data_ok = 0;
		r.outside_ok = 0;
		r.bad_offset = f.addr - (uintptr_t)s->buf;
	}
	if (c->error) {
		verified = "skipped";
		ret = 4;
	} else {
		if (!r.data_ok)
			n += snprintf(extra + n, sizeof(extra) - n,
				      " bad_offset=0x%" PRIx64, r.bad_offset);
		if (c->crc != r.crc)
			n += snprintf(extra + n, sizeof(extra) - n,
				      " crc_expected=0x%08x", r.crc);
		if (c->bytes != o->length)
			n += snprintf(extra + n, sizeof(extra) - n,
				      " bytes_expected=%" PRIu64, o->length);
		if (c->seq != seq)
			n += snprintf(extra + n, sizeof(extra) - n,
				      " seq_expected=%" PRIu64, seq);
		if (n) {
			verified = "no";
			ret = 1;
		}
	}
	if (!r.outside_ok && !ret)
		ret = 1;
	printf("seq=%llu error=%d status=%u bytes=%llu crc=0x%08x time_ns=%llu "
	       "verified=%s outside=%s%s\n",
	       (unsigned long long)c->seq, c->error, c->device_status,
	       (unsigned long long)c->bytes, c->crc,
	       (unsigned long long)c->device_time_ns, verified,
	       r.outside_ok ? "ok" : "bad", extra);
	return ret;
}

/*
 * --recheck: the data a completed transfer left must stay as it was; a
 * device that writes after its completion changes it behind our back.
 */
static int recheck_xfer(const struct session *s, const struct opts *o)
{
	struct region r;
	struct fault f;

	usleep(o->recheck_ms * 1000);
	region_init(&r, s, o);
	if (guarded(check_fn, &r, &f)) {
		printf("recheck=sigbus offset=0x%" PRIx64 "\n",
		       (uint64_t)(f.addr - (uintptr_t)s->buf));
		return 1;
	}
	if (!r.data_ok || !r.outside_ok) {
		printf("recheck=changed bad_offset=0x%" PRIx64 " outside=%s\n",
		       r.bad_offset, r.outside_ok ? "ok" : "bad");
		return 1;
	}
	printf("recheck=same\n");
	return 0;
}

/* ---- list, info ---------------------------------------------------------- */

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

static int cmd_list(struct opts *o)
{
	struct dirent *entry;
	char driver[PATH_MAX];
	int found = 0;
	DIR *dir;

	(void)o;
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

static void get_info(int fd, struct dmagate_info *info)
{
	memset(info, 0, sizeof(*info));
	info->size = sizeof(*info);
	if (ioctl(fd, DMAGATE_IOC_INFO, info))
		die_sys("DMAGATE_IOC_INFO");
}

static int cmd_info(struct opts *o)
{
	static const char *const modes[] = { "0", "msix", "msi", "intx" };
	struct dmagate_info info;
	int fd = open_dev(o);

	get_info(fd, &info);
	printf("version=%u max_buffer=%llu device_version=0x%08x irq_mode=",
	       info.version, (unsigned long long)info.max_buffer,
	       info.device_version);
	if (info.irq_mode < 4)
		printf("%s\n", modes[info.irq_mode]);
	else
		printf("%u\n", info.irq_mode);
	close(fd);
	return 0;
}

/* ---- xfer ---------------------------------------------------------------- */

static int cmd_xfer(struct opts *o)
{
	struct dmagate_completion c;
	struct session s;
	int ret = 0, r;
	uint64_t seq;
	long i;

	session_open(&s, o);
	for (i = 0; i < o->count; i++) {
		prepare(&s, o);
		seq = submit_or_die(&s, o);
		wait_or_exit(&s, o, seq, &c);
		r = report_xfer(&s, o, seq, &c);
		if (!r && o->recheck_ms)
			r = recheck_xfer(&s, o);
		if (r == 4 || (r == 1 && ret == 0))
			ret = r;
	}
	return ret;
}

/* ---- touch --------------------------------------------------------------- */

struct outcome {
	int sigbus;
	int code;
	uint64_t addr_offset;
	uint8_t value;
	int outside;
};

struct toucher {
	uint8_t *base;		/* the mapping the touches go through */
	uint64_t at, outside;
	int write, do_outside;
	int go[2], res[2];	/* command byte in, struct outcome out */
	pid_t pid;
	pthread_t thread;
};

/* Read, write and read back one byte outside the range; then restore it. */
static int outside_touch(uint8_t *p)
{
	uint8_t orig = 0, v = OUTSIDE_VALUE;
	struct fault f;

	if (touch_byte(p, 0, &orig, &f) || touch_byte(p, 1, &v, &f) ||
	    touch_byte(p, 0, &v, &f))
		return OUT_SIGBUS;
	if (v != OUTSIDE_VALUE)
		return OUT_MISMATCH;
	if (touch_byte(p, 1, &orig, &f))
		return OUT_SIGBUS;
	return OUT_OK;
}

/* The touch at t->at, and with @with_outside the outside touch too. */
static void run_touch(const struct toucher *t, int with_outside,
		      struct outcome *out)
{
	struct fault f;

	memset(out, 0, sizeof(*out));
	out->value = TOUCH_VALUE;
	if (touch_byte(t->base + t->at, t->write, &out->value, &f)) {
		out->sigbus = 1;
		out->code = f.code;
		out->addr_offset = f.addr - (uintptr_t)t->base;
	}
	if (with_outside && t->do_outside)
		out->outside = outside_touch(t->base + t->outside);
}

/* Child or thread: run touches on command (1 in flight, 2 after). */
static void serve_touches(struct toucher *t)
{
	struct outcome out;
	char cmd;

	while (read(t->go[0], &cmd, 1) == 1 && cmd) {
		run_touch(t, cmd == 1, &out);
		if (write(t->res[1], &out, sizeof(out)) != sizeof(out))
			break;
	}
}

static void *touch_thread(void *arg)
{
	serve_touches(arg);
	return NULL;
}

static void toucher_start(struct toucher *t, int via)
{
	if (pipe2(t->go, O_CLOEXEC) || pipe2(t->res, O_CLOEXEC))
		die_sys("pipe");
	if (via == VIA_THREAD) {
		spawn_thread(&t->thread, touch_thread, t);
		return;
	}
	t->pid = fork_child();
	if (t->pid == 0) {
		close(t->go[1]);
		close(t->res[0]);
		serve_touches(t);
		_exit(0);
	}
	close(t->go[0]);
	close(t->res[1]);
}

/* Touch now: here, or by command to the child/thread. */
static void touch_now(struct toucher *t, int via, int cmd, const struct opts *o,
		      struct outcome *out)
{
	ssize_t n;

	if (via != VIA_CHILD && via != VIA_THREAD) {
		run_touch(t, cmd == 1, out);
		return;
	}
	if (write(t->go[1], &cmd, 1) != 1)
		die_sys("write to toucher");
	n = timed_read(t->res[0], out, sizeof(*out), o->timeout_ms);
	if (n != sizeof(*out)) {
		if (n >= 0)
			errno = EPIPE;
		die_sys("read from toucher");
	}
}

static void toucher_stop(struct toucher *t, int via)
{
	char cmd = 0;
	int status;

	if (via != VIA_CHILD && via != VIA_THREAD)
		return;
	if (write(t->go[1], &cmd, 1) != 1)
		die_sys("write to toucher");
	if (via == VIA_THREAD) {
		pthread_join(t->thread, NULL);
		return;
	}
	if (waitpid(t->pid, &status, 0) < 0)
		die_sys("waitpid");
}

/* --via split: make a neighbour of the touched page read-only. */
static void split_vma(const struct session *s, uint64_t touched)
{
	uint64_t other = touched + page_size;

	if (other >= s->size) {
		if (touched < page_size) {
			fprintf(stderr, "dmagatectl: --via split needs two pages\n");
			exit(2);
		}
		other = touched - page_size;
	}
	if (mprotect(s->buf + other, page_size, PROT_READ))
		die_sys("mprotect");
}

static const char *const roles[] = { "parent", "parent", "child", "parent",
				     "thread" };

static void print_touch(const struct outcome *out, int via)
{
	if (out->sigbus)
		printf("signal=SIGBUS code=%s addr_offset=0x%" PRIx64
		       " pid_role=%s\n", bus_code_name(out->code),
		       out->addr_offset, roles[via]);
	else
		printf("signal=none value=0x%02x pid_role=%s\n", out->value,
		       roles[via]);
}

static int cmd_touch(struct opts *o)
{
	static const char *const outside_names[] = { "none", "ok", "SIGBUS",
						     "mismatch" };
	struct outcome during, after;
	struct dmagate_completion c;
	struct toucher t;
	struct session s;
	uint64_t seq, page = o->at & ~(page_size - 1);
	int ret, ok;

	memset(&t, 0, sizeof(t));
	session_open(&s, o);
	t.base = s.buf;
	t.at = o->at;
	t.outside = o->outside;
	t.write = o->touch_write;
	t.do_outside = o->outside_set;
	if (o->via == VIA_SECOND)
		t.base = map_buffer(s.fd, s.size);
	prepare(&s, o);
	if (o->via == VIA_SPLIT)
		split_vma(&s, page);
	if (o->via == VIA_CHILD || o->via == VIA_THREAD)
		toucher_start(&t, o->via);

	seq = submit_or_die(&s, o);
	touch_now(&t, o->via, 1, o, &during);
	print_touch(&during, o->via);
	if (t.do_outside)
		printf("outside_touch=%s\n", outside_names[during.outside]);

	wait_or_exit(&s, o, seq, &c);
	ret = report_xfer(&s, o, seq, &c);

	touch_now(&t, o->via, 2, o, &after);
	printf("after=%s\n", after.sigbus ? "SIGBUS" : "ok");
	toucher_stop(&t, o->via);

	if (ret == 4)
		return 4;
	ok = !ret && during.sigbus && !after.sigbus &&
	     during.addr_offset >= page && during.addr_offset < page + page_size;
	if (t.do_outside && during.outside != OUT_OK)
		ok = 0;
	return ok ? 0 : 1;
}

/* ---- efault ------------------------------------------------------------ */

/* "key_ret=N" or "key_errno=NAME" for a read()/write() result. */
static void print_copy(const char *key, ssize_t ret, int e, int last)
{
	if (ret < 0)
		printf("%s_errno=%s%s", key, errname(e), last ? "\n" : " ");
	else
		printf("%s_ret=%zd%s", key, ret, last ? "\n" : " ");
}

static int cmd_efault(struct opts *o)
{
	struct dmagate_completion c;
	struct session s;
	ssize_t rd, wr, rd2, wr2;
	int zero, p[2], rd_e, wr_e, rd2_e, wr2_e, ret;
	char drain[4096];
	uint64_t seq;

	if (o->at + 4096 > o->size)
		return usage_error("--at + 4096 past the buffer", NULL);
	session_open(&s, o);
	zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	if (zero < 0)
		die_sys("/dev/zero");
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
		die_sys("pipe");
	prepare(&s, o);

	seq = submit_or_die(&s, o);
	rd = read(zero, s.buf + o->at, 4096);
	rd_e = errno;
	wr = write(p[1], s.buf + o->at, 4096);
	wr_e = errno;
	print_copy("read", rd, rd_e, 0);
	print_copy("write", wr, wr_e, 1);

	wait_or_exit(&s, o, seq, &c);
	ret = report_xfer(&s, o, seq, &c);

	while (read(p[0], drain, sizeof(drain)) > 0)
		;
	rd2 = read(zero, s.buf + o->at, 4096);
	rd2_e = errno;
	wr2 = write(p[1], s.buf + o->at, 4096);
	wr2_e = errno;
	print_copy("after_read", rd2, rd2_e, 0);
	print_copy("after_write", wr2, wr2_e, 1);

	if (ret == 4)
		return 4;
	if (ret || rd >= 0 || rd_e != EFAULT || wr >= 0 || wr_e != EFAULT ||
	    rd2 != 4096 || wr2 != 4096)
		return 1;
	return 0;
}

/* ---- pin ----------------------------------------------------------------- */

static void copy_fn(void *arg)
{
	uint8_t **pair = arg;

	memcpy(pair[0], pair[1], 4096);
}

/* io_uring_setup + IORING_REGISTER_BUFFERS; prints the io_uring= value. */
static int try_io_uring(uint8_t *buf)
{
	struct io_uring_params params;
	struct iovec iov = { .iov_base = buf, .iov_len = 4096 };
	long ring, ret;

	memset(&params, 0, sizeof(params));
	ring = syscall(NR_IO_URING_SETUP, 4, &params);
	if (ring < 0) {
		printf("io_uring=setup_%s ", errname(errno));
		return 0;
	}
	ret = syscall(NR_IO_URING_REGISTER, (int)ring, IORING_REGISTER_BUFFERS,
		      &iov, 1);
	if (ret < 0)
		printf("io_uring=%s ", errname(errno));
	else
		printf("io_uring=%ld ", ret);
	close(ring);
	return ret >= 0;
}

static int cmd_pin(struct opts *o)
{
	uint8_t local[4096], *pair[2] = { local, NULL };
	struct iovec liov = { .iov_base = local, .iov_len = sizeof(local) };
	struct iovec riov;
	struct session s;
	struct fault f;
	int p[2], pinned = 0;
	ssize_t ret;

	session_open(&s, o);
	/* Every page mapped first: the lockless GUP walks what is there. */
	touch_pages(s.buf, s.size);
	riov.iov_base = s.buf;
	riov.iov_len = 4096;
	pair[1] = s.buf;
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
		die_sys("pipe");

	ret = vmsplice(p[1], &riov, 1, 0);
	if (ret < 0)
		printf("vmsplice=%s ", errname(errno));
	else
		printf("vmsplice=%zd ", ret);
	pinned |= ret >= 0;
	pinned |= try_io_uring(s.buf);
	ret = process_vm_readv(getpid(), &liov, 1, &riov, 1, 0);
	if (ret < 0)
		printf("process_vm_readv=%s ", errname(errno));
	else
		printf("process_vm_readv=%zd ", ret);
	printf("plain=%s\n", guarded(copy_fn, pair, &f) ? "SIGBUS" : "ok");
	return pinned ? 1 : 0;
}

/* ---- errnos -------------------------------------------------------------- */

static void print_case(const char *name, int ret)
{
	printf("case=%s errno=%s\n", name, errname(ret < 0 ? errno : 0));
}

/* The errno (0 on success) of mmap(len, off, flags); unmaps on success. */
static int try_mmap(int fd, uint64_t len, uint64_t off, int flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, off);

	if (p == MAP_FAILED)
		return -1;
	munmap(p, len);
	return 0;
}

/* SUBMIT that should fail; if it started a transfer, take its record. */
static int try_submit(int fd, const struct dmagate_submit *arg, long ms)
{
	struct dmagate_submit sub = *arg;
	struct dmagate_completion c;

	if (ioctl(fd, DMAGATE_IOC_SUBMIT, &sub))
		return -1;
	wait_ioctl(fd, sub.seq, (int64_t)ms * 1000000, ms + 2000, &c);
	return 0;
}

/* A structure as large as a page is fine, one byte larger is not. */
static void page_size_cases(const struct opts *o)
{
	struct dmagate_info *info;
	uint8_t *p;
	int fd;

	p = mmap(NULL, 2 * page_size, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die_sys("mmap");
	info = (struct dmagate_info *)p;
	fd = open_dev(o);
	info->size = page_size;
	print_case("info_page_zero_tail", ioctl(fd, DMAGATE_IOC_INFO, info));
	memset(p, 0, 2 * page_size);
	info->size = page_size + 8;
	print_case("info_over_page_zero_tail", ioctl(fd, DMAGATE_IOC_INFO, info));
	close(fd);
	munmap(p, 2 * page_size);
}

static void info_cases(const struct opts *o, uint64_t *max_buffer)
{
	struct {
		struct dmagate_info info;
		uint8_t tail[8];
	} big;
	struct dmagate_info info;
	int fd;

	fd = open_dev(o);
	print_case("ioctl_unknown", ioctl(fd, _IO(DMAGATE_IOC_MAGIC, 0x7f)));
	close(fd);
	fd = open_dev(o);
	print_case("ioctl_badptr", ioctl(fd, DMAGATE_IOC_INFO, (void *)8));
	close(fd);
	/* A known number with another direction or size is another command. */
	fd = open_dev(o);
	memset(&info, 0, sizeof(info));
	info.size = sizeof(info);
	print_case("ioctl_wrong_dir",
		   ioctl(fd, _IOR(DMAGATE_IOC_MAGIC, 0x00, struct dmagate_info), &info));
	print_case("ioctl_wrong_size",
		   ioctl(fd, _IOWR(DMAGATE_IOC_MAGIC, 0x00, struct dmagate_alloc), &info));
	close(fd);
	page_size_cases(o);
	fd = open_dev(o);
	memset(&info, 0, sizeof(info));
	info.size = 4;
	print_case("info_small_size", ioctl(fd, DMAGATE_IOC_INFO, &info));
	close(fd);
	fd = open_dev(o);
	memset(&big, 0, sizeof(big));
	big.info.size = sizeof(big.info) + 8;
	print_case("info_big_zero_tail", ioctl(fd, DMAGATE_IOC_INFO, &big));
	close(fd);
	fd = open_dev(o);
	memset(&big, 0, sizeof(big));
	big.info.size = sizeof(big.info) + 8;
	big.tail[0] = 1;
	print_case("info_big_nonzero_tail", ioctl(fd, DMAGATE_IOC_INFO, &big));
	get_info(fd, &info);
	*max_buffer = info.max_buffer;
	close(fd);
}

static void alloc_cases(const struct opts *o, uint64_t max_buffer)
{
	static const struct {
		const char *name;
		uint32_t flags;
		uint64_t length;
	} cases[] = {
		{ "alloc_flags", 1, 0x10000 },
		{ "alloc_zero", 0, 0 },
		{ "alloc_unaligned", 0, 4097 },
		{ "alloc_too_big", 0, 0 },
	};
	struct dmagate_submit sub = {
		.size = sizeof(sub), .op = DMAGATE_XFER_FILL, .length = 4096,
	};
	uint64_t length;
	size_t i;
	int fd;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		length = cases[i].length;
		if (!strcmp(cases[i].name, "alloc_too_big"))
			length = max_buffer + 4096;
		fd = open_dev(o);
		print_case(cases[i].name, alloc_buffer(fd, length, cases[i].flags));
		close(fd);
	}
	fd = open_dev(o);
	print_case("mmap_no_buffer", try_mmap(fd, 4096, 0, MAP_SHARED));
	close(fd);
	fd = open_dev(o);
	print_case("submit_no_buffer", try_submit(fd, &sub, o->timeout_ms));
	close(fd);
}

/*
 * SUBMIT with an argument it can read but not write back: EFAULT, and
 * nothing posted (no transfer to wait for afterwards).
 */
static void readonly_submit_case(int fd)
{
	struct dmagate_completion c;
	struct dmagate_submit *sub;

	sub = mmap(NULL, page_size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (sub == MAP_FAILED)
		die_sys("mmap");
	memset(sub, 0, sizeof(*sub));
	sub->size = sizeof(*sub);
	sub->op = DMAGATE_XFER_FILL;
	sub->length = page_size;
	if (mprotect(sub, page_size, PROT_READ))
		die_sys("mprotect");
	print_case("submit_readonly_arg", ioctl(fd, DMAGATE_IOC_SUBMIT, sub));
	print_case("submit_readonly_posted", wait_ioctl(fd, 0, 0, 2000, &c));
	munmap(sub, page_size);
}

static void submit_cases(int fd, const struct opts *o)
{
	static const struct {
		const char *name;
		struct dmagate_submit sub;
	} cases[] = {
		{ "submit_bad_op", { .op = 9, .length = 4096 } },
		{ "submit_reserved", { .op = 1, .reserved = 1, .length = 4096 } },
		{ "submit_flags", { .op = 1, .flags = 1, .length = 4096 } },
		{ "submit_unaligned", { .op = 1, .offset = 1, .length = 4096 } },
		{ "submit_zero_len", { .op = 1, .length = 0 } },
		{ "submit_past_end", { .op = 1, .length = 0x10001 } },
		{ "submit_overflow", { .op = 1, .offset = 0xfffffffffffff000ULL,
				       .length = 0x2000 } },
	};
	struct dmagate_submit sub;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sub = cases[i].sub;
		sub.size = sizeof(sub);
		print_case(cases[i].name, try_submit(fd, &sub, o->timeout_ms));
	}
	readonly_submit_case(fd);
}

static void mmap_cases(int fd, const struct opts *o)
{
	void *p, *q;
	int other, ret;

	print_case("mmap_private", try_mmap(fd, 4096, 0, MAP_PRIVATE));
	print_case("mmap_past_end", try_mmap(fd, 0x20000, 0, MAP_SHARED));
	print_case("mmap_offset_past_end", try_mmap(fd, 4096, 0x10000, MAP_SHARED));
	p = map_buffer(fd, 0x10000);
	q = mremap(p, 0x10000, 0x20000, MREMAP_MAYMOVE);
	ret = q == MAP_FAILED ? -1 : 0;
	print_case("mremap_grow", ret);
	munmap(q == MAP_FAILED ? p : q, q == MAP_FAILED ? 0x10000 : 0x20000);
	other = open_dev(o);
	print_case("other_fd_mmap", try_mmap(other, 4096, 0, MAP_SHARED));
	close(other);
}

static void read_wait_cases(int fd, const struct opts *o)
{
	struct dmagate_completion c;
	char small[8];
	int flags;

	print_case("read_small", timed_read(fd, small, sizeof(small), o->timeout_ms));
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK))
		die_sys("fcntl");
	print_case("read_nonblock_empty", timed_read(fd, &c, sizeof(c), o->timeout_ms));
	if (fcntl(fd, F_SETFL, flags))
		die_sys("fcntl");
	print_case("wait_unknown", wait_ioctl(fd, 12345, (int64_t)o->timeout_ms * 1000000,
					      o->timeout_ms + 2000, &c));
	print_case("wait_none", wait_ioctl(fd, 0, (int64_t)o->timeout_ms * 1000000,
					   o->timeout_ms + 2000, &c));
}

/* Is a completion record waiting (the transfer already finished)? */
static int record_ready(int fd)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	return poll(&pfd, 1, 0) > 0 && (pfd.revents & POLLIN);
}

static void busy_cases(int fd, const struct opts *o)
{
	struct dmagate_completion c;
	uint64_t seq1, seq2 = 0;
	int ret;

	if (submit(fd, DMAGATE_XFER_FILL, 0, 0x10000, o->param, &seq1))
		die_sys("DMAGATE_IOC_SUBMIT");
	ret = submit(fd, DMAGATE_XFER_FILL, 0x1000, 0x1000, o->param, &seq2);
	if (ret < 0)
		print_case("submit_busy", ret);
	else
		printf("case=submit_busy errno=%s\n", record_ready(fd) ? "RACE" : "0");

	if (record_ready(fd)) {
		printf("case=wait_timeout errno=RACE\n");
	} else {
		ret = wait_ioctl(fd, seq1, 0, o->timeout_ms + 2000, &c);
		if (ret < 0)
			print_case("wait_timeout", ret);
		else
			printf("case=wait_timeout errno=RACE\n");
	}
	print_case("wait_ok", wait_ioctl(fd, seq1, -1, o->timeout_ms, &c));
	if (seq2)
		wait_ioctl(fd, seq2, (int64_t)o->timeout_ms * 1000000,
			   o->timeout_ms + 2000, &c);
}

static int cmd_errnos(struct opts *o)
{
	uint64_t max_buffer;
	int fd;

	info_cases(o, &max_buffer);
	alloc_cases(o, max_buffer);
	fd = open_dev(o);
	if (alloc_buffer(fd, 0x10000, 0))
		die_sys("DMAGATE_IOC_ALLOC");
	print_case("alloc_twice", alloc_buffer(fd, 0x10000, 0));
	submit_cases(fd, o);
	mmap_cases(fd, o);
	read_wait_cases(fd, o);
	busy_cases(fd, o);
	close(fd);
	return 0;
}

/* ---- wait-hup, hold ------------------------------------------------------ */

static void drain_records(int fd)
{
	struct dmagate_completion c;
	ssize_t n;
	int i, flags = fcntl(fd, F_GETFL);

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK))
		die_sys("fcntl");
	for (i = 0; i < 4096; i++) {
		n = read(fd, &c, sizeof(c));
		if (n != sizeof(c))
			break;
		printf("record seq=%llu error=%s\n", (unsigned long long)c.seq,
		       errname(-c.error));
	}
	if (n < 0)
		printf("read_errno=%s\n", errname(errno));
	else
		printf("read_ret=%zd\n", n);
}

static int cmd_wait_hup(struct opts *o)
{
	struct pollfd pfd = { .events = POLLIN };
	struct dmagate_completion c;
	struct session s;
	char names[64];
	uint64_t seq;
	uint8_t v = 0;
	struct fault f;
	int ret;

	session_open(&s, o);
	pfd.fd = s.fd;
	if (o->idle) {
		printf("ready\n");
	} else {
		seq = submit_or_die(&s, o);
		printf("submitted seq=%" PRIu64 "\n", seq);
	}
	do {
		ret = poll(&pfd, 1, -1);
	} while (ret < 0 && errno == EINTR);
	if (ret < 0)
		die_sys("poll");
	printf("revents=%s\n", events_str(pfd.revents, names, sizeof(names)));
	drain_records(s.fd);

	printf("touch=%s\n", touch_byte(s.buf, 0, &v, &f) ? "SIGBUS" : "ok");
	ret = wait_ioctl(s.fd, 0, (int64_t)o->timeout_ms * 1000000,
			 o->timeout_ms + 2000, &c);
	printf("wait_errno=%s\n", errname(ret < 0 ? errno : 0));
	ret = submit(s.fd, DMAGATE_XFER_FILL, 0, page_size, o->param, &seq);
	printf("submit_errno=%s\n", errname(ret < 0 ? errno : 0));
	ret = try_mmap(s.fd, page_size, 0, MAP_SHARED);
	printf("mmap_errno=%s\n", errname(ret < 0 ? errno : 0));
	ret = close(s.fd);
	printf("close=%s\n", errname(ret < 0 ? errno : 0));
	return 0;
}

/* The hold child: read the byte at @p forever, SIGBUS or not. */
static void __attribute__((noreturn)) hold_touch_loop(uint8_t *p)
{
	struct timespec ts = { 0, 100000 };
	struct fault f;
	uint8_t v = 0;

	for (;;) {
		touch_byte(p, 0, &v, &f);
		nanosleep(&ts, NULL);
	}
}

static int cmd_hold(struct opts *o)
{
	struct session s;
	uint64_t seq;

	session_open(&s, o);
	if (!o->no_child && fork_child() == 0)
		hold_touch_loop(s.buf + o->offset);
	seq = submit_or_die(&s, o);
	printf("submitted seq=%" PRIu64 "\n", seq);
	if (o->close_mid) {
		/* The last munmap drops the file: its release waits for the DMA. */
		if (close(s.fd))
			die_sys("close");
		if (munmap(s.buf, s.size))
			die_sys("munmap");
		printf("closed\n");
		return 0;
	}
	for (;;)
		pause();
	return 0;
}

/* ---- cycle --------------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* 64 spread-out words of the whole buffer against FILL of @seed. */
static int spot_check(const uint8_t *buf, uint64_t size, uint64_t seed)
{
	uint64_t words = size / 8, k, v;
	struct fault f;
	int j;

	for (j = 0; j < SPOT_WORDS; j++) {
		k = words > 1 ? j * (words - 1) / (SPOT_WORDS - 1) : 0;
		if (read_word(buf + 8 * k, &v, &f) || v != fill_word(seed, k))
			return 1;
	}
	return 0;
}

/* Whole buffer (--verify) or spot check; 1 on any mismatch or fault. */
static int check_fill(const struct session *s, uint64_t seed, int full)
{
	struct region r = {
		.buf = s->buf, .size = s->size, .len = s->size,
		.param = seed, .op = DMAGATE_XFER_FILL,
	};
	struct fault f;

	if (!full)
		return spot_check(s->buf, s->size, seed);
	if (guarded(check_fn, &r, &f))
		return 1;
	return !r.data_ok;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted @v. */
static uint64_t percentile(const uint64_t *v, long n, int pct)
{
	long rank = (n * pct + 99) / 100;

	return v[rank > 0 ? rank - 1 : 0];
}

/*
 * The parts of a cycle, ns: what this program sees, and what the driver
 * stamps in its debugfs last_cycle (CLOCK_MONOTONIC, as ktime_get_ns()).
 */
enum part {
	PART_TOTAL, PART_SUBMIT, PART_ZAP, PART_DEVICE, PART_WAKE, PART_TOUCH,
	PART_FAULT, PART_MAP, PART_WAIT_MAP, PART_PROTECT, PART_FAULTS, PART_PMDS, NPARTS
};
static const char *const part_names[NPARTS] = {
	"median_ns", "submit_ns", "zap_ns", "device_ns", "wake_ns", "touch_ns",
	"fault_ns", "map_ns", "wait_map_ns", "protect_ns", "faults", "pmds",
};

struct cycle_bench {
	const struct session *s;
	const struct opts *o;
	int stamps_fd;		/* the driver's last_cycle, or -1 */
	uint64_t *parts[NPARTS];
};

/* What the driver stamped for the last SUBMIT; 0 on success. */
static int read_stamps(int fd, uint64_t *zap, uint64_t *doorbell, uint64_t *irq,
		       uint64_t *fault, uint64_t *map, uint64_t *faults, uint64_t *pmds,
		       uint64_t *wait_map)
{
	unsigned long long v[9];
	char text[512];
	ssize_t n = pread(fd, text, sizeof(text) - 1, 0);

	if (n <= 0)
		return -1;
	text[n] = 0;
	if (sscanf(text, "zap_ns=%llu doorbell_ns=%llu irq_ns=%llu finish_ns=%llu "
		   "fault_ns=%llu map_ns=%llu faults=%llu pmds=%llu wait_map_ns=%llu",
		   &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8]) != 9)
		return -1;
	*zap = v[0], *doorbell = v[1], *irq = v[2];
	*fault = v[4], *map = v[5], *faults = v[6], *pmds = v[7], *wait_map = v[8];
	return 0;
}

static void protect_or_die(const struct session *s, int prot, uint64_t *ns)
{
	uint64_t start = now_ns();

	if (mprotect(s->buf, s->size, prot))
		die_sys("mprotect");
	*ns += now_ns() - start;
}

/*
 * One cycle: SUBMIT, poll, read, touch every page.  Returns 1 if a check
 * failed, -1 if the wait timed out; *error: the record had one.
 */
static int one_cycle(struct cycle_bench *b, long i, uint64_t seed, int *error)
{
	const struct session *s = b->s;
	const struct opts *o = b->o;
	uint64_t seq, t0, t1, t2, t3, protect = 0;
	uint64_t zap = 0, doorbell = 0, irq = 0, fault = 0, map = 0, faults = 0, pmds = 0;
	uint64_t wait_map = 0;
	struct dmagate_completion c;
	struct opts po = *o;

	po.wait_mode = WAIT_POLL;
	*error = 0;
	t0 = now_ns();
	if (o->protect == PROTECT_MPROTECT)
		protect_or_die(s, PROT_NONE, &protect);
	if (submit(s->fd, DMAGATE_XFER_FILL, 0, s->size, seed, &seq))
		die_sys("DMAGATE_IOC_SUBMIT");
	t1 = now_ns();
	if (wait_readable(s->fd, &po, 1) || read_record(s->fd, &c, o->timeout_ms)) {
		if (errno != ETIMEDOUT)
			die_sys("wait");
		*error = 1;
		return -1;
	}
	t2 = now_ns();
	if (o->protect == PROTECT_MPROTECT)
		protect_or_die(s, PROT_READ | PROT_WRITE, &protect);
	touch_pages(s->buf, s->size);
	t3 = now_ns();
	if (b->stamps_fd >= 0 &&
	    read_stamps(b->stamps_fd, &zap, &doorbell, &irq, &fault, &map, &faults, &pmds,
			&wait_map))
		die_sys("last_cycle");
	b->parts[PART_TOTAL][i] = t3 - t0;
	b->parts[PART_SUBMIT][i] = t1 - t0;
	b->parts[PART_ZAP][i] = zap;
	b->parts[PART_DEVICE][i] = irq > doorbell ? irq - doorbell : 0;
	b->parts[PART_WAKE][i] = irq && t2 > irq ? t2 - irq : 0;
	b->parts[PART_TOUCH][i] = t3 - t2;
	b->parts[PART_FAULT][i] = fault;
	b->parts[PART_MAP][i] = map;
	b->parts[PART_WAIT_MAP][i] = wait_map;
	b->parts[PART_PROTECT][i] = protect;
	b->parts[PART_FAULTS][i] = faults;
	b->parts[PART_PMDS][i] = pmds;
	*error = c.error != 0 || c.seq != seq;
	if (*error)
		return 0;
	return check_fill(s, seed, o->verify);
}

/* Map the buffer again as @n VMAs of about equal size, at the same address. */
static void remap_in_pieces(struct session *s, long n)
{
	uint64_t pages = s->size / page_size, off = 0, piece, len;
	long i;

	if ((uint64_t)n > pages)
		n = pages;
	piece = (pages + n - 1) / n * page_size;
	for (i = 0; i < n && off < s->size; i++, off += len) {
		len = s->size - off < piece ? s->size - off : piece;
		if (mmap(s->buf + off, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
			 s->fd, off) == MAP_FAILED)
			die_sys("mmap piece");
	}
}

/* @n children that hold the mapping (fork copies it) until killed. */
static void fork_holders(pid_t *pids, long n)
{
	long i;

	for (i = 0; i < n; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die_sys("fork");
		if (!pids[i]) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			for (;;)
				pause();
		}
	}
}

static void reap_holders(const pid_t *pids, long n)
{
	long i;

	for (i = 0; i < n; i++) {
		kill(pids[i], SIGKILL);
		waitpid(pids[i], NULL, 0);
	}
}

static int cmd_cycle(struct opts *o)
{
	long i, n = 0, errors = 0, bad = 0, p;
	struct cycle_bench b = { .o = o };
	pid_t pids[64];
	struct session s;
	char path[256];
	int error, ret;

	session_open(&s, o);
	if (o->vmas > 1)
		remap_in_pieces(&s, o->vmas);
	b.s = &s;
	snprintf(path, sizeof(path), "/sys/kernel/debug/dmagate/%s/last_cycle",
		 strrchr(o->dev, '/') ? strrchr(o->dev, '/') + 1 : o->dev);
	b.stamps_fd = open(path, O_RDONLY | O_CLOEXEC);
	for (p = 0; p < NPARTS; p++) {
		b.parts[p] = calloc(o->count, sizeof(uint64_t));
		if (!b.parts[p])
			die_sys("calloc");
	}
	/* Once, untimed: the pages are faulted in and the holders copy them. */
	touch_pages(s.buf, s.size);
	fork_holders(pids, o->children);
	for (i = 0; i < o->count; i++) {
		ret = one_cycle(&b, n, i + 1, &error);
		errors += error;
		if (ret < 0)
			break;		/* timed out: the transfer is still ours */
		bad += ret;
		n++;
	}
	reap_holders(pids, o->children);
	printf("cycles=%ld size=%" PRIu64 " vmas=%ld children=%ld kernel_parts=%s", n, s.size,
	       o->vmas > 1 ? o->vmas : 1, o->children, b.stamps_fd >= 0 ? "yes" : "no");
	for (p = 0; p < NPARTS; p++) {
		qsort(b.parts[p], n, sizeof(uint64_t), cmp_u64);
		printf(" %s=%" PRIu64, part_names[p], n ? percentile(b.parts[p], n, 50) : 0);
		if (p == PART_TOTAL && n)
			printf(" min_ns=%" PRIu64 " p90_ns=%" PRIu64 " max_ns=%" PRIu64,
			       b.parts[p][0], percentile(b.parts[p], n, 90), b.parts[p][n - 1]);
		free(b.parts[p]);
	}
	printf(" errors=%ld bad=%ld\n", errors, bad);
	return errors || bad ? 1 : 0;
}

/*
 * Every STRESS_HOLD_EVERY cycles, the pages stay granted until both
 * touchers have read them: left to the scheduler, one toucher can sit out
 * every granted window (seen: 1 read against 81,468 SIGBUS in a child).
 */
#define STRESS_HOLD_EVERY 8

enum { TOUCHER_THREAD, TOUCHER_CHILD, TOUCHERS };

struct shared {
	uint64_t seed;		/* the seed of the FILL last submitted */
	uint64_t read_seed[TOUCHERS];	/* the last seed each toucher read */
	int stop;
};

struct toucher_stats {
	uint64_t reads, sigbus, unexpected;
};

struct stress_toucher {
	struct shared *sh;
	const uint8_t *buf;
	uint64_t size, rng;
	int who;		/* TOUCHER_THREAD or TOUCHER_CHILD */
	struct toucher_stats st;
};

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* A read of word @k: is @v the pattern of a seed in [before - 1, after]? */
static int plausible(uint64_t v, uint64_t k, uint64_t before, uint64_t after)
{
	uint64_t seed;

	for (seed = before ? before - 1 : 0; seed <= after; seed++)
		if (v == fill_word(seed, k))
			return 1;
	return 0;
}

static void stress_loop(struct stress_toucher *t)
{
	uint64_t words = t->size / 8, k, v, before, after;
	uintptr_t lo = (uintptr_t)t->buf, hi = lo + t->size;
	struct fault f;

	while (!__atomic_load_n(&t->sh->stop, __ATOMIC_SEQ_CST)) {
		k = xorshift(&t->rng) % words;
		before = __atomic_load_n(&t->sh->seed, __ATOMIC_SEQ_CST);
		if (read_word(t->buf + 8 * k, &v, &f)) {
			if (f.addr >= lo && f.addr < hi)
				t->st.sigbus++;
			else
				t->st.unexpected++;
			continue;
		}
		after = __atomic_load_n(&t->sh->seed, __ATOMIC_SEQ_CST);
		if (!plausible(v, k, before, after)) {
			t->st.unexpected++;
			continue;
		}
		t->st.reads++;
		if (v == fill_word(after, k))
			__atomic_store_n(&t->sh->read_seed[t->who], after,
					 __ATOMIC_SEQ_CST);
	}
}

/*
 * Keep @seed's pages granted until both touchers have read them; a
 * toucher that cannot within the timeout ends the run.
 */
static int stress_hold(struct shared *sh, uint64_t seed, long ms)
{
	const struct timespec nap = { 0, 100000 };
	uint64_t deadline = now_ns() + (uint64_t)ms * 1000000;
	int i;

	for (i = 0; i < TOUCHERS; i++)
		while (__atomic_load_n(&sh->read_seed[i], __ATOMIC_SEQ_CST) < seed) {
			if (now_ns() > deadline)
				return 1;
			nanosleep(&nap, NULL);
		}
	return 0;
}

static void *stress_thread(void *arg)
{
	stress_loop(arg);
	return NULL;
}

/* The child toucher: loop, then send its counts up the pipe. */
static pid_t stress_child(struct stress_toucher *t, int p[2])
{
	pid_t pid = fork_child();

	if (pid)
		return pid;
	close(p[0]);
	stress_loop(t);
	if (write(p[1], &t->st, sizeof(t->st)) != sizeof(t->st))
		_exit(1);
	_exit(0);
}

/* Stop the touchers; child counts and any abnormal child exit. */
static void stress_stop(struct stress_toucher *th, pthread_t thread,
			struct stress_toucher *ch, pid_t pid, int p[2], long ms)
{
	int status;

	__atomic_store_n(&th->sh->stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(thread, NULL);
	close(p[1]);
	memset(&ch->st, 0, sizeof(ch->st));
	if (timed_read(p[0], &ch->st, sizeof(ch->st), ms) != sizeof(ch->st))
		ch->st.unexpected++;
	if (waitpid(pid, &status, 0) < 0)
		die_sys("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		ch->st.unexpected++;
}

/* One stress cycle: publish @seed, FILL, poll, read, spot check. */
static int stress_cycle(const struct session *s, const struct opts *o,
			struct shared *sh, uint64_t seed)
{
	struct dmagate_completion c;
	struct opts po = *o;
	uint64_t seq;

	po.wait_mode = WAIT_POLL;
	__atomic_store_n(&sh->seed, seed, __ATOMIC_SEQ_CST);
	if (submit(s->fd, DMAGATE_XFER_FILL, 0, s->size, seed, &seq))
		die_sys("DMAGATE_IOC_SUBMIT");
	if (wait_readable(s->fd, &po, 1) || read_record(s->fd, &c, o->timeout_ms)) {
		if (errno != ETIMEDOUT)
			die_sys("wait");
		return -1;
	}
	if (c.error || c.seq != seq)
		return 1;
	if (spot_check(s->buf, s->size, seed))
		return 1;
	if (seed % STRESS_HOLD_EVERY == 0)
		return stress_hold(sh, seed, o->timeout_ms) ? -1 : 0;
	return 0;
}

/* The FILL pattern of seed 0 over the whole buffer, written by the CPU. */
static void cpu_fill_fn(void *arg)
{
	const struct session *s = arg;
	uint64_t k;

	for (k = 0; k < s->size / 8; k++)
		((volatile uint64_t *)s->buf)[k] = htole64(fill_word(0, k));
}

static int cmd_stress(struct opts *o)
{
	struct stress_toucher th, ch;
	struct session s;
	struct shared *sh;
	struct fault f;
	pthread_t thread;
	long i, errors = 0;
	uint64_t unexpected;
	int p[2], ret;
	pid_t pid;

	session_open(&s, o);
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		die_sys("mmap shared");
	memset(sh, 0, sizeof(*sh));
	/* Seed 0 by the CPU, so the touchers' first reads are checkable. */
	if (guarded(cpu_fill_fn, &s, &f)) {
		printf("prepare=SIGBUS addr_offset=0x%" PRIx64 "\n",
		       (uint64_t)(f.addr - (uintptr_t)s.buf));
		return 1;
	}
	if (pipe2(p, O_CLOEXEC))
		die_sys("pipe");
	th = (struct stress_toucher){ .sh = sh, .buf = s.buf, .size = s.size,
				      .who = TOUCHER_THREAD };
	ch = th;
	ch.who = TOUCHER_CHILD;
	th.rng = now_ns() | 1;
	ch.rng = (now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
	spawn_thread(&thread, stress_thread, &th);
	pid = stress_child(&ch, p);

	for (i = 1; i <= o->count; i++) {
		ret = stress_cycle(&s, o, sh, i);
		errors += ret != 0;
		if (ret < 0)
			break;
	}
	stress_stop(&th, thread, &ch, pid, p, o->timeout_ms);
	unexpected = th.st.unexpected + ch.st.unexpected;
	printf("cycles=%ld thread_reads=%" PRIu64 " thread_sigbus=%" PRIu64
	       " child_reads=%" PRIu64 " child_sigbus=%" PRIu64
	       " errors=%ld unexpected=%" PRIu64 "\n", i > o->count ? o->count : i,
	       th.st.reads, th.st.sigbus, ch.st.reads, ch.st.sigbus, errors,
	       unexpected);
	return errors || unexpected ? 1 : 0;
}

/* ---- selftest ------------------------------------------------------------ */

static int cmd_selftest(struct opts *o)
{
	static const char digits[] = "123456789";
	uint64_t v, word = 0;
	const char *fail = NULL;
	int i;

	(void)o;
	if (crc32_update(0, (const uint8_t *)digits, 9) != 0xcbf43926U)
		fail = "crc32";
	if (fill_word(0, 1) != 0xe220a8397b1dcdafULL)
		fail = "mix64";
	for (i = 0; i < 16; i++)
		if (expected_byte(DMAGATE_XFER_FILL, 42, 0, i, &word) !=
		    fill_byte(42, i))
			fail = "fill_byte";
	if (expected_byte(DMAGATE_XFER_TRANSFORM, 0x0100, 4096, 1, &word) !=
	    (input_byte(4097) ^ 1))
		fail = "transform";
	if (parse_u64("1M", &v, 1) || v != 1048576 ||
	    parse_u64("0x1000", &v, 1) || v != 4096 ||
	    parse_u64("4k", &v, 1) || v != 4096 ||
	    parse_u64("2G", &v, 1) || v != 2147483648ULL ||
	    !parse_u64("-1", &v, 1) || !parse_u64("1X", &v, 1) ||
	    !parse_u64("0x1p", &v, 1) || !parse_u64("99999999999G", &v, 1))
		fail = "parse";
	if (strcmp(errname(EFAULT), "EFAULT") || strcmp(errname(0), "0"))
		fail = "errname";
	if (fail) {
		printf("selftest=fail what=%s\n", fail);
		return 1;
	}
	printf("selftest=ok\n");
	return 0;
}

/* ---- regrant, drain ------------------------------------------------------ */

static long minor_faults(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_SELF, &ru))
		die_sys("getrusage");
	return ru.ru_minflt;
}

/*
 * One transfer over the whole buffer; then a read of the page at --at, then
 * of every page in order. Prints the offsets whose touch took a fault (the
 * driver maps a run of pages per fault).
 */
static int cmd_regrant(struct opts *o)
{
	uint64_t pages = o->size / page_size, i, n = 0, *at;
	volatile uint8_t sink;
	struct dmagate_completion c;
	struct session s;
	long before;

	if (o->at >= o->size)
		return usage_error("--at past the buffer", NULL);
	at = calloc(pages + 1, sizeof(*at));
	if (!at)
		die_sys("calloc");
	session_open(&s, o);
	wait_or_exit(&s, o, submit_or_die(&s, o), &c);
	for (i = 0; i <= pages; i++) {
		uint64_t off = i ? (i - 1) * page_size : o->at & ~(page_size - 1);

		before = minor_faults();
		sink = s.buf[off];
		if (minor_faults() != before)
			at[n++] = off;
	}
	(void)sink;
	printf("faults=%" PRIu64 " fault_offsets=", n);
	for (i = 0; i < n; i++)
		printf("%s0x%" PRIx64, i ? "," : "", at[i]);
	printf("\n");
	free(at);
	return 0;
}

static int cmd_drain(struct opts *o)
{
	const char *path = o->from ? o->from : OWNERSHIP_TRACE_PIPE;
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	char buf[65536];
	ssize_t n;

	if (fd < 0)
		die_sys(path);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (fwrite(buf, 1, n, stdout) != (size_t)n)
			die_sys("stdout");
	if (n < 0 && errno != EAGAIN)
		die_sys(path);
	close(fd);
	return 0;
}

/* ---- main ---------------------------------------------------------------- */

static const struct command {
	const char *name;
	int (*fn)(struct opts *o);
	int takes_op;		/* 0 none, 1 required, 2 optional */
} commands[] = {
	{ "regrant", cmd_regrant, 1 },
	{ "drain", cmd_drain, 0 },
	{ "list", cmd_list, 0 },
	{ "info", cmd_info, 0 },
	{ "xfer", cmd_xfer, 1 },
	{ "touch", cmd_touch, 1 },
	{ "efault", cmd_efault, 1 },
	{ "pin", cmd_pin, 0 },
	{ "errnos", cmd_errnos, 0 },
	{ "wait-hup", cmd_wait_hup, 2 },
	{ "hold", cmd_hold, 2 },
	{ "cycle", cmd_cycle, 0 },
	{ "stress", cmd_stress, 0 },
	{ "selftest", cmd_selftest, 0 },
};

static void install_handlers(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO;
	if (sigaction(SIGBUS, &sa, NULL))
		die_sys("sigaction SIGBUS");
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = on_alarm;	/* no SA_RESTART: blocked calls see EINTR */
	if (sigaction(SIGALRM, &sa, NULL))
		die_sys("sigaction SIGALRM");
	signal(SIGPIPE, SIG_IGN);
}

int main(int argc, char **argv)
{
	struct opts o = {
		.dev = "/dev/dmagate0", .size = 1 << 20,
		.param = 0x0123456789abcdefULL, .timeout_ms = 20000, .count = 1,
	};
	size_t i;
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (i = 1; i < (size_t)argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			fputs(usage, stdout);
			return 0;
		}
	}
	if (argc < 2)
		return usage_error("missing command", NULL);
	page_size = sysconf(_SC_PAGESIZE);
	crc32_init();
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name))
			continue;
		ret = parse_args(&o, argc, argv, commands[i].takes_op);
		if (ret)
			return ret;
		install_handlers();
		return commands[i].fn(&o);
	}
	return usage_error("unknown command", argv[1]);
}
