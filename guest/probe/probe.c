/*
 * The probe guest: a tiny freestanding x86_64 program that checks what the VMM promised and
 * reports each check on the serial port as one parseable line:
 *
 *   ok - NAME
 *   not ok - NAME: detail
 *   # key: value          (facts the host-side test compares with the boot plan)
 *
 * then resets the machine through the i8042 controller. General-purpose registers only
 * (-mgeneral-regs-only): no SSE, no XSAVE, no INT3, so it runs on emulated KVM too.
 */
#include <stdint.h>
#include "io.h"

#define COM1 0x3f8
#define BOOT_TIMER_PORT 0x3f0
#define BOOT_TIMER_MAGIC 123
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe

#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01u

/* struct boot_params offsets (Linux x86 boot protocol). */
#define BP_E820_ENTRIES 0x1e8
#define BP_CMD_LINE_PTR 0x228
#define BP_E820_TABLE 0x2d0

struct e820_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
} __attribute__((packed));

struct pvclock_vcpu_time_info {
    uint32_t version;
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;
    uint32_t tsc_to_system_mul;
    int8_t tsc_shift;
    uint8_t flags;
    uint8_t pad[2];
} __attribute__((packed));

static volatile struct pvclock_vcpu_time_info pvclock __attribute__((aligned(64)));
static int failures;

/* ---- serial output (polled) ---- */

static void serial_putc(char c) {
    for (int spins = 0; spins < 100000 && !(inb(COM1 + 5) & 0x20); spins++) {
    }
    outb(COM1, (uint8_t)c);
}

static void puts_(const char *s) {
    while (*s) {
        if (*s == '\n') serial_putc('\r');
        serial_putc(*s++);
    }
}

static void put_dec(uint64_t v) {
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v && i > 0);
    puts_(&buf[i]);
}

static void put_hex(uint64_t v) {
    static const char digits[] = "0123456789abcdef";
    char buf[19];
    int i = 18;
    buf[i] = 0;
    do {
        buf[--i] = digits[v & 0xf];
        v >>= 4;
    } while (v && i > 2);
    buf[--i] = 'x';
    buf[--i] = '0';
    puts_(&buf[i]);
}

static void ok(const char *name) {
    puts_("ok - ");
    puts_(name);
    puts_("\n");
}

static void not_ok(const char *name, const char *detail) {
    failures++;
    puts_("not ok - ");
    puts_(name);
    puts_(": ");
    puts_(detail);
    puts_("\n");
}

static int str_eq(const char *a, const char *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* ---- checks ---- */

static void check_cmdline(const uint8_t *bp) {
    uint32_t ptr = *(const uint32_t *)(bp + BP_CMD_LINE_PTR);
    if (ptr == 0) {
        not_ok("cmdline", "cmd_line_ptr is 0");
        return;
    }
    puts_("# cmdline: ");
    puts_((const char *)(uintptr_t)ptr);
    puts_("\n");
    ok("cmdline");
}

static uint64_t check_e820(const uint8_t *bp) {
    uint8_t n = bp[BP_E820_ENTRIES];
    const struct e820_entry *e = (const struct e820_entry *)(bp + BP_E820_TABLE);
    uint64_t ram = 0, prev_end = 0;
    int sorted = 1;
    if (n == 0 || n > 128) {
        not_ok("e820", "no usable memory map in the zero page");
        return 0;
    }
    for (int i = 0; i < n; i++) {
        puts_("# e820: ");
        put_hex(e[i].addr);
        puts_(" ");
        put_hex(e[i].size);
        puts_(e[i].type == 1 ? " ram\n" : " reserved\n");
        if (e[i].addr < prev_end) sorted = 0;
        prev_end = e[i].addr + e[i].size;
        if (e[i].type == 1) ram += e[i].size;
    }
    if (!sorted)
        not_ok("e820", "entries overlap or are out of order");
    else
        ok("e820");
    puts_("# ram-bytes: ");
    put_dec(ram);
    puts_("\n");
    return ram;
}

/* Writes a pattern at the start and end of every RAM range and reads it back. */
static void check_memory(const uint8_t *bp) {
    uint8_t n = bp[BP_E820_ENTRIES];
    const struct e820_entry *e = (const struct e820_entry *)(bp + BP_E820_TABLE);
    for (int i = 0; i < n; i++) {
        if (e[i].type != 1 || e[i].addr < 0x100000 || e[i].addr + e[i].size > (1ull << 30)) continue;
        volatile uint64_t *last = (volatile uint64_t *)(uintptr_t)(e[i].addr + e[i].size - 8);
        *last = 0x5a5aa5a5deadbeefull ^ (uint64_t)(uintptr_t)last;
        if (*last != (0x5a5aa5a5deadbeefull ^ (uint64_t)(uintptr_t)last)) {
            not_ok("memory", "top of RAM does not hold what was written");
            return;
        }
    }
    ok("memory");
}

static void check_hypervisor(void) {
    uint32_t r[4];
    cpuid(1, 0, r);
    if (!(r[2] & (1u << 31))) {
        not_ok("cpuid-hypervisor", "CPUID.1:ECX[31] (hypervisor present) is clear");
        return;
    }
    cpuid(0x40000000, 0, r);
    char sig[13];
    *(uint32_t *)&sig[0] = r[1];
    *(uint32_t *)&sig[4] = r[2];
    *(uint32_t *)&sig[8] = r[3];
    sig[12] = 0;
    puts_("# hypervisor: ");
    puts_(sig);
    puts_("\n");
    if (!str_eq(sig, "KVMKVMKVM", 9)) {
        not_ok("cpuid-hypervisor", "signature is not KVMKVMKVM");
        return;
    }
    ok("cpuid-hypervisor");
    cpuid(1, 0, r);
    puts_("# apic-id: ");
    put_dec(r[1] >> 24);
    puts_("\n");
}

static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static uint64_t kvmclock_ns(void) {
    uint32_t version;
    uint64_t ns;
    do {
        version = pvclock.version;
        __asm__ volatile("" ::: "memory");
        uint64_t delta = rdtsc() - pvclock.tsc_timestamp;
        int8_t shift = pvclock.tsc_shift;
        if (shift < 0)
            delta >>= -shift;
        else
            delta <<= shift;
        ns = pvclock.system_time + (uint64_t)(((unsigned __int128)delta * pvclock.tsc_to_system_mul) >> 32);
        __asm__ volatile("" ::: "memory");
    } while ((version & 1) || version != pvclock.version);
    return ns;
}

static void check_kvmclock(void) {
    uint32_t r[4];
    cpuid(0x40000001, 0, r);
    if (!(r[0] & (1u << 3))) {
        not_ok("kvm-clock", "KVM_FEATURE_CLOCKSOURCE2 is not offered");
        return;
    }
    wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)(uintptr_t)&pvclock | 1);
    uint64_t t0 = kvmclock_ns();
    uint64_t t1 = t0;
    for (int i = 0; i < 1000000 && t1 == t0; i++) t1 = kvmclock_ns();
    puts_("# kvm-clock-ns: ");
    put_dec(t0);
    puts_(" ");
    put_dec(t1);
    puts_("\n");
    if (t1 <= t0)
        not_ok("kvm-clock", "kvm-clock did not advance");
    else
        ok("kvm-clock");
}

static void reset(void) {
    outb(I8042_COMMAND, I8042_RESET);
}

void probe_main(const uint8_t *boot_params) {
    outb(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC);
    puts_("# fc-run probe guest\n");
    check_cmdline(boot_params);
    check_e820(boot_params);
    check_memory(boot_params);
    check_hypervisor();
    check_kvmclock();
    puts_("# probe done: ");
    put_dec((uint64_t)failures);
    puts_(" failed\n");
    reset();
}
