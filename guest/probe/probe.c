/*
 * The probe guest: a tiny freestanding x86_64 program that checks what the VMM promised and
 * reports each check on the serial port as one parseable line:
 *
 *   ok - NAME
 *   not ok - NAME: detail
 *   # key: value          (facts the host-side test compares with the boot plan)
 *
 * then resets the machine through the i8042 controller (with probe.wait=1 on the command line it
 * first waits, halted, until a keyboard byte such as Ctrl-Alt-Del arrives; with probe.snapshot=1 it
 * prepares state, waits the same way, and checks that state and its devices afterwards, to survive
 * a snapshot and restore: see snapshot_mode). probe.vsock=init brings a vsock device up without
 * its two connections. General-purpose registers only (-mgeneral-regs-only): no SSE, no XSAVE,
 * no INT3, so it runs on emulated KVM too.
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

/* hvm_start_info (PVH) and its memory map entries. */
struct hvm_start_info {
    uint32_t magic;
    uint32_t version;
    uint32_t flags;
    uint32_t nr_modules;
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;
    uint64_t rsdp_paddr;
    uint64_t memmap_paddr;
    uint32_t memmap_entries;
    uint32_t reserved;
} __attribute__((packed));

struct hvm_memmap_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
} __attribute__((packed));

#define MODE_LINUX64 0
#define MODE_PVH 1
#define XEN_HVM_START_MAGIC 0x336ec578u
#define MAX_RANGES 32

/* The memory map, whichever protocol delivered it. */
static struct e820_entry ranges[MAX_RANGES];
static int nranges;
static const char *cmdline;

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
static int kvmclock_ok; /* kvm-clock registered and seen advancing: waits are timed on it */
static int failures;

/* ---- serial output (polled) ---- */

/* Line status reads that found the transmitter busy (reported by probe.flood). */
static uint64_t serial_busy_polls;

static void serial_putc(char c) {
    for (int spins = 0; spins < 100000 && !(inb(COM1 + 5) & 0x20); spins++) {
        serial_busy_polls++;
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

/* Whether `word` appears in `hay` as a whole space-separated word. */
static int has_word(const char *hay, const char *word) {
    for (const char *p = hay; p && *p; p++) {
        int i = 0;
        while (word[i] && p[i] == word[i]) i++;
        if (!word[i] && (p[i] == 0 || p[i] == ' ') && (p == hay || p[-1] == ' ')) return 1;
    }
    return 0;
}

/* ---- checks ---- */

/* Reads the command line and memory map from the zero page or hvm_start_info. */
static int read_boot_info(const void *info, int mode) {
    if (mode == MODE_PVH) {
        const struct hvm_start_info *si = info;
        puts_("# boot-protocol: pvh\n");
        if (si->magic != XEN_HVM_START_MAGIC) {
            not_ok("boot-info", "hvm_start_info magic is wrong");
            return 0;
        }
        cmdline = (const char *)(uintptr_t)si->cmdline_paddr;
        const struct hvm_memmap_entry *m = (const struct hvm_memmap_entry *)(uintptr_t)si->memmap_paddr;
        for (uint32_t i = 0; i < si->memmap_entries && nranges < MAX_RANGES; i++, nranges++) {
            ranges[nranges].addr = m[i].addr;
            ranges[nranges].size = m[i].size;
            ranges[nranges].type = m[i].type;
        }
    } else {
        const uint8_t *bp = info;
        puts_("# boot-protocol: linux64\n");
        cmdline = (const char *)(uintptr_t)*(const uint32_t *)(bp + BP_CMD_LINE_PTR);
        const struct e820_entry *e = (const struct e820_entry *)(bp + BP_E820_TABLE);
        for (int i = 0; i < bp[BP_E820_ENTRIES] && nranges < MAX_RANGES; i++, nranges++) ranges[nranges] = e[i];
    }
    ok("boot-info");
    return 1;
}

static void check_cmdline(void) {
    if (cmdline == 0) {
        not_ok("cmdline", "no command line pointer");
        return;
    }
    puts_("# cmdline: ");
    puts_(cmdline);
    puts_("\n");
    ok("cmdline");
}

static uint64_t check_e820(void) {
    int n = nranges;
    const struct e820_entry *e = ranges;
    uint64_t ram = 0, prev_end = 0;
    int sorted = 1;
    if (n == 0) {
        not_ok("e820", "no memory map");
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
static void check_memory(void) {
    int n = nranges;
    const struct e820_entry *e = ranges;
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
    if (t1 <= t0) {
        not_ok("kvm-clock", "kvm-clock did not advance");
    } else {
        kvmclock_ok = 1;
        ok("kvm-clock");
    }
}

/* ---- paging: map the LAPIC/IOAPIC page range (3-4 GiB) uncached ---- */

static uint64_t high_pd[512] __attribute__((aligned(4096)));

static void map_mmio_gap(void) {
    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    uint64_t *pml4 = (uint64_t *)(uintptr_t)(cr3 & ~0xfffull);
    uint64_t *pdpt = (uint64_t *)(uintptr_t)(pml4[0] & ~0xfffull);
    for (uint64_t i = 0; i < 512; i++) high_pd[i] = (0xc0000000ull + (i << 21)) | 0x83 | 0x18; /* PWT|PCD */
    pdpt[3] = (uint64_t)(uintptr_t)high_pd | 3;
    __asm__ volatile("mov %0, %%cr3" : : "r"(cr3) : "memory");
}

#define LAPIC_BASE 0xfee00000ull
#define LAPIC_ID 0x20
#define LAPIC_EOI 0xb0
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define IOAPIC_BASE 0xfec00000ull

static inline uint32_t lapic_read(uint32_t reg) { return *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg); }
static inline void lapic_write(uint32_t reg, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(LAPIC_BASE + reg) = v; }
static void ioapic_write(uint32_t reg, uint32_t v) {
    *(volatile uint32_t *)(uintptr_t)IOAPIC_BASE = reg;
    *(volatile uint32_t *)(uintptr_t)(IOAPIC_BASE + 0x10) = v;
}

static void spin(uint64_t n) {
    for (volatile uint64_t i = 0; i < n; i++) __asm__ volatile("pause");
}

/* ---- interrupts ---- */

struct idt_entry {
    uint16_t off0;
    uint16_t sel;
    uint8_t ist;
    uint8_t type;
    uint16_t off1;
    uint32_t off2;
    uint32_t zero;
} __attribute__((packed));

static struct idt_entry idt[256] __attribute__((aligned(16)));
static volatile uint32_t serial_irqs;
struct interrupt_frame;

#define SERIAL_VECTOR 0x24

__attribute__((interrupt)) static void serial_isr(struct interrupt_frame *frame) {
    (void)frame;
    (void)inb(COM1 + 2); /* IIR: acknowledges the THRE interrupt */
    serial_irqs++;
    lapic_write(LAPIC_EOI, 0);
}

__attribute__((interrupt)) static void spurious_isr(struct interrupt_frame *frame) {
    (void)frame;
    lapic_write(LAPIC_EOI, 0);
}

static void set_gate(int vec, void (*fn)(struct interrupt_frame *)) {
    uint64_t a = (uint64_t)(uintptr_t)fn;
    uint16_t cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[vec] = (struct idt_entry){(uint16_t)a, cs, 0, 0x8e, (uint16_t)(a >> 16), (uint32_t)(a >> 32), 0};
}

static void load_idt(void) {
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) ptr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
    __asm__ volatile("lidt %0" : : "m"(ptr));
}

static void check_serial_irq(void) {
    for (int v = 32; v < 256; v++) set_gate(v, spurious_isr);
    set_gate(SERIAL_VECTOR, serial_isr);
    load_idt();
    outb(0x21, 0xff); /* mask the 8259 PICs: interrupts come through the IOAPIC */
    outb(0xa1, 0xff);
    lapic_write(LAPIC_SVR, 0x1ff);
    uint32_t bsp = lapic_read(LAPIC_ID) >> 24;
    ioapic_write(0x10 + 2 * 4 + 1, bsp << 24);
    ioapic_write(0x10 + 2 * 4, SERIAL_VECTOR); /* fixed, physical, edge, active high, unmasked */
    outb(COM1 + 4, 0x08);                      /* MCR: OUT2 gates the UART's interrupt line */
    outb(COM1 + 1, 0x02);                      /* IER: transmitter holding register empty */
    __asm__ volatile("sti");
    for (int i = 0; i < 2000000 && serial_irqs == 0; i++) __asm__ volatile("pause");
    __asm__ volatile("cli");
    outb(COM1 + 1, 0x00);
    ioapic_write(0x10 + 2 * 4, 0x10000 | SERIAL_VECTOR); /* mask again */
    puts_("# serial-irqs: ");
    put_dec(serial_irqs);
    puts_("\n");
    if (serial_irqs > 0)
        ok("serial-irq");
    else
        not_ok("serial-irq", "enabling the THRE interrupt raised no interrupt on IOAPIC pin 4");
}

/* ---- SMP: every CPU in the MP table comes online ---- */

#define TRAMPOLINE_BASE 0x10000
extern char ap_trampoline[], ap_trampoline_end[], ap_trampoline_cr3[], ap_trampoline_entry[];
extern void ap_entry64(void);

static volatile uint32_t print_lock;
static volatile uint32_t aps_online;
static volatile uint8_t online[256];

static void lock(volatile uint32_t *l) {
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) __asm__ volatile("pause");
}
static void unlock(volatile uint32_t *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

void ap_main(void) {
    uint32_t r[4];
    cpuid(1, 0, r);
    uint32_t id = r[1] >> 24;
    lock(&print_lock);
    puts_("# cpu-online: ");
    put_dec(id);
    puts_("\n");
    unlock(&print_lock);
    online[id & 0xff] = 1;
    __atomic_add_fetch(&aps_online, 1, __ATOMIC_SEQ_CST);
}

static int mp_checksum(const uint8_t *p, int len) {
    uint8_t sum = 0;
    for (int i = 0; i < len; i++) sum += p[i];
    return sum == 0;
}

static const uint8_t *find_mp_floating_pointer(void) {
    for (uintptr_t a = 0x9fc00; a < 0xa0000; a += 16)
        if (str_eq((const char *)a, "_MP_", 4) && mp_checksum((const uint8_t *)a, 16)) return (const uint8_t *)a;
    for (uintptr_t a = 0xf0000; a < 0x100000; a += 16)
        if (str_eq((const char *)a, "_MP_", 4) && mp_checksum((const uint8_t *)a, 16)) return (const uint8_t *)a;
    return 0;
}

static void check_smp(void) {
    const uint8_t *fp = find_mp_floating_pointer();
    if (!fp) {
        not_ok("mptable", "no MP floating pointer structure");
        return;
    }
    const uint8_t *cfg = (const uint8_t *)(uintptr_t)*(const uint32_t *)(fp + 4);
    uint16_t len = *(const uint16_t *)(cfg + 4);
    if (!str_eq((const char *)cfg, "PCMP", 4) || !mp_checksum(cfg, len)) {
        not_ok("mptable", "bad MP configuration table");
        return;
    }
    ok("mptable");
    uint8_t ids[256];
    int ncpus = 0;
    for (const uint8_t *e = cfg + 44; e < cfg + len;) {
        if (e[0] == 0) {
            if (e[3] & 1) ids[ncpus++] = e[1];
            e += 20;
        } else {
            e += 8;
        }
    }
    puts_("# mptable-cpus: ");
    put_dec((uint64_t)ncpus);
    puts_("\n");

    uint64_t cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    uint8_t *dst = (uint8_t *)TRAMPOLINE_BASE;
    for (char *p = ap_trampoline; p < ap_trampoline_end; p++) *dst++ = (uint8_t)*p;
    *(uint32_t *)(uintptr_t)(TRAMPOLINE_BASE + (ap_trampoline_cr3 - ap_trampoline)) = (uint32_t)cr3;
    *(uint64_t *)(uintptr_t)(TRAMPOLINE_BASE + (ap_trampoline_entry - ap_trampoline)) = (uint64_t)(uintptr_t)ap_entry64;

    uint32_t bsp = lapic_read(LAPIC_ID) >> 24;
    online[bsp & 0xff] = 1;
    int aps = 0;
    for (int i = 0; i < ncpus; i++) {
        if (ids[i] == bsp) continue;
        aps++;
        lapic_write(LAPIC_ICR_HI, (uint32_t)ids[i] << 24);
        lapic_write(LAPIC_ICR_LO, 0x00004500); /* INIT */
        spin(10000);
        for (int sipi = 0; sipi < 2; sipi++) {
            lapic_write(LAPIC_ICR_HI, (uint32_t)ids[i] << 24);
            lapic_write(LAPIC_ICR_LO, 0x00004600 | (TRAMPOLINE_BASE >> 12)); /* STARTUP */
            spin(2000);
        }
    }
    for (uint64_t i = 0; i < 200000000 && aps_online < (uint32_t)aps; i++) __asm__ volatile("pause");
    int missing = 0;
    for (int i = 0; i < ncpus; i++) missing += !online[ids[i]];
    lock(&print_lock);
    puts_("# cpus-online: ");
    put_dec((uint64_t)(ncpus - missing));
    puts_("\n");
    unlock(&print_lock);
    if (missing)
        not_ok("smp", "a CPU listed in the MP table did not come online");
    else
        ok("smp");
}

/* ---- virtio-mmio: a polled driver for block and entropy devices ---- */

#define VIRTIO_MAGIC 0x74726976u
#define VQ_SIZE 8
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

struct vring_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
} __attribute__((packed));

struct vq {
    struct vring_desc desc[VQ_SIZE] __attribute__((aligned(16)));
    uint16_t avail_flags, avail_idx, avail_ring[VQ_SIZE], used_event;
    uint8_t pad[4096 - 16 * VQ_SIZE - 6 - 2 * VQ_SIZE];
    volatile uint16_t used_flags, used_idx;
    volatile struct {
        uint32_t id, len;
    } used_ring[VQ_SIZE];
} __attribute__((aligned(4096)));

#define VQ_MAX 8 /* block, entropy, net (2) and vsock (3), with room for a second drive */
static struct vq vqs[VQ_MAX];
static int nvq;
static uint8_t dma[4][4096] __attribute__((aligned(4096)));

static inline uint32_t mmio_read(uint64_t base, uint32_t off) { return *(volatile uint32_t *)(uintptr_t)(base + off); }
static inline void mmio_write(uint64_t base, uint32_t off, uint32_t v) { *(volatile uint32_t *)(uintptr_t)(base + off) = v; }

static uint64_t parse_hex(const char **p) {
    uint64_t v = 0;
    for (;; (*p)++) {
        char c = **p;
        if (c >= '0' && c <= '9') v = v * 16 + (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uint64_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v = v * 16 + (uint64_t)(c - 'A' + 10);
        else return v;
    }
}

/* Initializes the device with `nq` queues; returns the first, or 0 when the device refuses. */
static struct vq *virtio_init_n(uint64_t base, uint64_t extra_features, uint64_t *offered, int nq) {
    mmio_write(base, 0x70, 0);
    mmio_write(base, 0x70, 1);
    mmio_write(base, 0x70, 1 | 2);
    mmio_write(base, 0x14, 0);
    uint64_t f = mmio_read(base, 0x10);
    mmio_write(base, 0x14, 1);
    f |= (uint64_t)mmio_read(base, 0x10) << 32;
    *offered = f;
    uint64_t want = (1ull << 32) | (extra_features & f);
    mmio_write(base, 0x24, 0);
    mmio_write(base, 0x20, (uint32_t)want);
    mmio_write(base, 0x24, 1);
    mmio_write(base, 0x20, (uint32_t)(want >> 32));
    mmio_write(base, 0x70, 1 | 2 | 8);
    if (!(mmio_read(base, 0x70) & 8) || nvq + nq > VQ_MAX) return 0;
    struct vq *first = &vqs[nvq];
    for (int i = 0; i < nq; i++) {
        struct vq *q = &vqs[nvq++];
        mmio_write(base, 0x30, (uint32_t)i);
        mmio_write(base, 0x38, VQ_SIZE);
        mmio_write(base, 0x80, (uint32_t)(uintptr_t)q->desc);
        mmio_write(base, 0x84, 0);
        mmio_write(base, 0x90, (uint32_t)(uintptr_t)&q->avail_flags);
        mmio_write(base, 0x94, 0);
        mmio_write(base, 0xa0, (uint32_t)(uintptr_t)&q->used_flags);
        mmio_write(base, 0xa4, 0);
        mmio_write(base, 0x44, 1);
    }
    mmio_write(base, 0x70, 1 | 2 | 8 | 4);
    return first;
}

static struct vq *virtio_init(uint64_t base, uint64_t extra_features, uint64_t *offered) {
    return virtio_init_n(base, extra_features, offered, 1);
}

/* Publishes the chain at descriptor 0 of queue `qi`, notifies and polls for its completion;
   returns the used length or -1. */
static int64_t virtio_submit_q(uint64_t base, struct vq *q, uint32_t qi) {
    uint16_t before = q->used_idx;
    q->avail_ring[q->avail_idx % VQ_SIZE] = 0;
    __sync_synchronize();
    q->avail_idx++;
    __sync_synchronize();
    mmio_write(base, 0x50, qi);
    for (uint64_t i = 0; i < 100000000ull; i++) {
        if (q->used_idx != before) {
            __sync_synchronize();
            uint32_t isr = mmio_read(base, 0x60);
            mmio_write(base, 0x64, isr);
            return q->used_ring[before % VQ_SIZE].len;
        }
        __asm__ volatile("pause");
    }
    return -1;
}

static int64_t virtio_submit(uint64_t base, struct vq *q) { return virtio_submit_q(base, q, 0); }

struct blk_hdr {
    uint32_t type, reserved;
    uint64_t sector;
} __attribute__((packed));

/* One virtio-blk request: header, optional data buffer, status. Returns the status byte or -1. */
static int blk_request(uint64_t base, struct vq *q, uint32_t type, uint64_t sector, uint8_t *buf, uint32_t len, int device_writes) {
    static struct blk_hdr hdr __attribute__((aligned(16)));
    static volatile uint8_t status;
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status = 0xee;
    int n = 0;
    q->desc[n] = (struct vring_desc){(uint64_t)(uintptr_t)&hdr, sizeof hdr, VRING_DESC_F_NEXT, 1};
    n++;
    if (len) {
        q->desc[n] = (struct vring_desc){(uint64_t)(uintptr_t)buf, len, (uint16_t)(VRING_DESC_F_NEXT | (device_writes ? VRING_DESC_F_WRITE : 0)), (uint16_t)(n + 1)};
        n++;
    }
    q->desc[n] = (struct vring_desc){(uint64_t)(uintptr_t)&status, 1, VRING_DESC_F_WRITE, 0};
    if (virtio_submit(base, q) < 0) return -1;
    return status;
}

static int mem_eq(const uint8_t *a, const uint8_t *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* The drive probe.snapshot=1 writes to: the first writable one (else the first one) the checks
   initialized. */
static struct {
    uint64_t base;
    struct vq *q;
    uint64_t capacity;
    int ro;
} snap_blk;

static void check_block(uint64_t base) {
    uint64_t offered;
    struct vq *q = virtio_init(base, (1ull << 5) | (1ull << 9), &offered);
    if (!q) {
        not_ok("blk-init", "the device refused FEATURES_OK");
        return;
    }
    int ro = (offered >> 5) & 1;
    uint64_t capacity = (uint64_t)mmio_read(base, 0x100) | ((uint64_t)mmio_read(base, 0x104) << 32);
    if (!snap_blk.q || (snap_blk.ro && !ro)) snap_blk.base = base, snap_blk.q = q, snap_blk.capacity = capacity, snap_blk.ro = ro;
    puts_("# blk-capacity-sectors: ");
    put_dec(capacity);
    puts_("\n");
    uint8_t *buf = dma[0];
    for (int i = 0; i < 21; i++) buf[i] = 0;
    if (blk_request(base, q, 8, 0, buf, 20, 1) != 0) {
        not_ok("blk-id", "GET_ID failed");
    } else {
        puts_("# blk-id: ");
        puts_((const char *)buf);
        puts_("\n");
        ok("blk-id");
    }
    if (blk_request(base, q, 0, 0, buf, 512, 1) != 0) {
        not_ok("blk-read", "reading sector 0 failed");
    } else {
        buf[32] = 0;
        puts_("# blk-sector0: ");
        puts_((const char *)buf);
        puts_("\n");
        ok("blk-read");
    }
    static const char msg[] = "written by the fc-run probe guest";
    uint8_t *w = dma[1];
    for (int i = 0; i < 512; i++) w[i] = (uint8_t)(i < (int)sizeof msg ? msg[i] : (i & 0xff));
    int st = blk_request(base, q, 1, 1, w, 512, 0);
    if (ro) {
        if (st == 1)
            ok("blk-ro-refused");
        else
            not_ok("blk-ro-refused", "a write to a read-only drive did not fail with IOERR");
        return;
    }
    if (st != 0) {
        not_ok("blk-write", "writing sector 1 failed");
        return;
    }
    if (blk_request(base, q, 4, 0, 0, 0, 0) != 0) not_ok("blk-flush", "FLUSH failed");
    else ok("blk-flush");
    uint8_t *r = dma[2];
    if (blk_request(base, q, 0, 1, r, 512, 1) != 0 || !mem_eq(r, w, 512))
        not_ok("blk-write", "sector 1 did not read back what was written");
    else
        ok("blk-write");
    if (blk_request(base, q, 0, capacity, r, 512, 1) == 1)
        ok("blk-bounds");
    else
        not_ok("blk-bounds", "a read past the end of the disk did not fail with IOERR");
}

static struct {
    uint64_t base;
    struct vq *q;
} snap_rng;

static void check_rng(uint64_t base) {
    uint64_t offered;
    struct vq *q = virtio_init(base, 0, &offered);
    if (!q) {
        not_ok("rng", "the device refused FEATURES_OK");
        return;
    }
    if (!snap_rng.q) snap_rng.base = base, snap_rng.q = q;
    uint8_t *buf = dma[3];
    for (int i = 0; i < 64; i++) buf[i] = 0;
    q->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)buf, 64, VRING_DESC_F_WRITE, 0};
    int64_t got = virtio_submit(base, q);
    int nonzero = 0;
    for (int i = 0; i < 64; i++) nonzero += buf[i] != 0;
    puts_("# rng-bytes: ");
    put_dec((uint64_t)(got < 0 ? 0 : got));
    puts_("\n");
    if (got == 64 && nonzero > 32)
        ok("rng");
    else
        not_ok("rng", "the entropy device returned no random bytes");
}

/* Dotted-quad after `key` on the command line, as a big-endian 32-bit value; 0 when absent. */
static uint32_t cmdline_ip(const char *key) {
    for (const char *p = cmdline; p && *p; p++) {
        int i = 0;
        while (key[i] && p[i] == key[i]) i++;
        if (key[i]) continue;
        const char *q = p + i;
        uint32_t ip = 0;
        for (int part = 0; part < 4; part++) {
            uint32_t v = 0;
            while (*q >= '0' && *q <= '9') v = v * 10 + (uint32_t)(*q++ - '0');
            ip = (ip << 8) | (v & 0xff);
            if (*q == '.') q++;
        }
        return ip;
    }
    return 0;
}

static void put_mac(const uint8_t *m) {
    static const char d[] = "0123456789abcdef";
    char s[18];
    for (int i = 0; i < 6; i++) {
        s[3 * i] = d[m[i] >> 4];
        s[3 * i + 1] = d[m[i] & 15];
        s[3 * i + 2] = i < 5 ? ':' : 0;
    }
    puts_(s);
}

/* ---- bounded waits ---- */

/*
 * A deadline `ms` milliseconds away, measured on kvm-clock when check_kvmclock saw it advance
 * (wall time, however fast the CPU or the emulator runs). Without kvm-clock, a count of polling
 * turns stands in: generous on hardware, longer in wall time under a software emulator, but always
 * finite.
 */
struct deadline {
    uint64_t end_ns;
    uint64_t turns_left;
};

static struct deadline deadline_in(uint32_t ms) {
    struct deadline d = {0, (uint64_t)ms * 20000};
    if (kvmclock_ok) d.end_ns = kvmclock_ns() + (uint64_t)ms * 1000000;
    return d;
}

static int expired(struct deadline *d) {
    if (kvmclock_ok) return kvmclock_ns() >= d->end_ns;
    if (d->turns_left == 0) return 1;
    d->turns_left--;
    return 0;
}

/* ---- virtio-net: a polled NIC ---- */

#define NET_HDR_BYTES 12   /* struct virtio_net_hdr with num_buffers (VIRTIO_F_VERSION_1), sent as zeros */
#define NET_BUF_BYTES 2048 /* a whole Ethernet frame (1514 bytes) and the header fit one buffer */
#define ETH_HDR 14
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static inline void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8), p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)), put16(p + 2, (uint16_t)v); }

/*
 * Every receive descriptor owns one buffer and stays posted: a frame is copied out of its buffer
 * and the buffer goes straight back to the device, so a burst of segments queues in the ring (or,
 * when the ring is full, in the device, which stops reading the TAP) rather than being dropped.
 * No offloads are negotiated (only VERSION_1 and MAC), so frames arrive with complete checksums
 * and must leave with them, and none is larger than an Ethernet frame.
 */
struct nic {
    uint64_t base;
    struct vq *rx, *tx;
    uint16_t rx_seen;      /* receive used-ring entries consumed */
    uint8_t mac[6];
    uint32_t ip;           /* our address (probe.ip=), host byte order */
    uint32_t other_frames; /* frames nobody was waiting for (IPv6 neighbour discovery, say) */
};

static uint8_t net_rx_bufs[VQ_SIZE][NET_BUF_BYTES] __attribute__((aligned(16)));
static uint8_t net_tx_buf[NET_BUF_BYTES] __attribute__((aligned(16)));
static uint8_t net_frame[NET_BUF_BYTES]; /* the frame nic_poll returned last */

static void nic_post_rx(struct nic *n, uint16_t id) {
    n->rx->desc[id] = (struct vring_desc){(uint64_t)(uintptr_t)net_rx_bufs[id], NET_BUF_BYTES, VRING_DESC_F_WRITE, 0};
    n->rx->avail_ring[n->rx->avail_idx % VQ_SIZE] = id;
    __sync_synchronize();
    n->rx->avail_idx++;
    __sync_synchronize();
}

static int nic_open(struct nic *n, uint64_t base) {
    uint64_t offered;
    n->base = base;
    n->rx = virtio_init_n(base, 1ull << 5, &offered, 2);
    if (!n->rx) return 0;
    n->tx = n->rx + 1;
    n->rx_seen = n->rx->used_idx;
    n->other_frames = 0;
    for (int i = 0; i < 6; i++) n->mac[i] = (uint8_t)(*(volatile uint8_t *)(uintptr_t)(base + 0x100 + (uint64_t)i));
    for (uint16_t i = 0; i < VQ_SIZE; i++) nic_post_rx(n, i);
    mmio_write(base, 0x50, 0);
    return 1;
}

/* Sends the `len`-byte Ethernet frame built at net_tx_buf + NET_HDR_BYTES; waits for the device. */
static int nic_send(struct nic *n, uint32_t len) {
    for (int i = 0; i < NET_HDR_BYTES; i++) net_tx_buf[i] = 0;
    n->tx->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)net_tx_buf, NET_HDR_BYTES + len, 0, 0};
    return virtio_submit_q(n->base, n->tx, 1) >= 0;
}

static inline uint8_t *nic_tx_frame(void) { return net_tx_buf + NET_HDR_BYTES; }

static int arp_send(struct nic *n, uint16_t op, const uint8_t *dst_mac, const uint8_t *target_mac, uint32_t target_ip) {
    uint8_t *e = nic_tx_frame();
    for (int i = 0; i < 6; i++) e[i] = dst_mac[i], e[6 + i] = n->mac[i];
    put16(e + 12, ETHERTYPE_ARP);
    uint8_t *a = e + ETH_HDR;
    put16(a, 1);              /* hardware: Ethernet */
    put16(a + 2, ETHERTYPE_IPV4);
    a[4] = 6, a[5] = 4;
    put16(a + 6, op);
    for (int i = 0; i < 6; i++) a[8 + i] = n->mac[i], a[18 + i] = target_mac[i];
    put32(a + 14, n->ip);
    put32(a + 24, target_ip);
    return nic_send(n, ETH_HDR + 28);
}

/* Answers an ARP request for our address (the host asks before it sends to us); 1 if it was one. */
static int arp_answer(struct nic *n, const uint8_t *f, uint32_t len) {
    const uint8_t *a = f + ETH_HDR;
    if (len < ETH_HDR + 28 || get16(f + 12) != ETHERTYPE_ARP || get16(a + 6) != 1 || get32(a + 24) != n->ip) return 0;
    uint8_t requester[6];
    for (int i = 0; i < 6; i++) requester[i] = a[8 + i];
    arp_send(n, 2, requester, requester, get32(a + 14));
    return 1;
}

/* The next received frame, copied to net_frame: its length, or 0 when none is waiting. ARP
   requests for our address are answered here and not returned. */
static uint32_t nic_poll(struct nic *n) {
    while (n->rx->used_idx != n->rx_seen) {
        __sync_synchronize();
        uint32_t id = n->rx->used_ring[n->rx_seen % VQ_SIZE].id;
        uint32_t len = n->rx->used_ring[n->rx_seen % VQ_SIZE].len;
        n->rx_seen++;
        if (id >= VQ_SIZE) continue; /* not a buffer we posted: nothing to copy or give back */
        len = len > NET_HDR_BYTES + ETH_HDR && len <= NET_BUF_BYTES ? len - NET_HDR_BYTES : 0;
        for (uint32_t i = 0; i < len; i++) net_frame[i] = net_rx_bufs[id][NET_HDR_BYTES + i];
        nic_post_rx(n, (uint16_t)id);
        mmio_write(n->base, 0x50, 0);
        mmio_write(n->base, 0x64, mmio_read(n->base, 0x60)); /* acknowledge the interrupt */
        if (!len || arp_answer(n, net_frame, len)) continue;
        return len;
    }
    return 0;
}

/* Resolves `ip` to a MAC address, asking once a second until `ms` pass. 1: resolved; 0: no reply;
   -1: the first request did not leave (the transmit queue did not complete). */
static int arp_resolve(struct nic *n, uint32_t ip, uint8_t mac[6], uint32_t ms) {
    static const uint8_t broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, unknown[6] = {0};
    struct deadline give_up = deadline_in(ms);
    for (int attempt = 0;; attempt++) {
        if (!arp_send(n, 1, broadcast, unknown, ip) && attempt == 0) return -1;
        struct deadline retry = deadline_in(1000);
        while (!expired(&retry)) {
            uint32_t len = nic_poll(n);
            if (!len) {
                if (expired(&give_up)) return 0;
                __asm__ volatile("pause");
                continue;
            }
            const uint8_t *a = net_frame + ETH_HDR;
            if (len >= ETH_HDR + 28 && get16(net_frame + 12) == ETHERTYPE_ARP && get16(a + 6) == 2 && get32(a + 14) == ip) {
                for (int i = 0; i < 6; i++) mac[i] = a[8 + i];
                return 1;
            }
            n->other_frames++;
        }
        if (expired(&give_up)) return 0;
    }
}

/* ARP for the peer given as probe.peer= through the NIC, from probe.ip=; expects the reply. */
static void check_net_arp(struct nic *n, uint32_t peer) {
    uint8_t peer_mac[6];
    int r = arp_resolve(n, peer, peer_mac, 10000);
    if (r < 0) {
        not_ok("net-tx", "the transmit queue did not complete");
        return;
    }
    ok("net-tx");
    if (r == 0) {
        not_ok("net-arp", "no ARP reply arrived");
        return;
    }
    puts_("# net-peer-mac: ");
    put_mac(peer_mac);
    puts_("\n# net-other-frames: ");
    put_dec(n->other_frames);
    puts_("\n");
    ok("net-arp");
}

/* ---- HTTP/1.1 responses, parsed as the bytes arrive ---- */

#define HTTP_HEAD_MAX 1024
#define HTTP_BODY_KEEP 256 /* the start of the body kept for the caller; the rest is counted only */

struct http_resp {
    char head[HTTP_HEAD_MAX + 1];
    uint32_t head_len;
    int head_done;
    int status;
    uint32_t content_length;
    uint32_t body_len;              /* body bytes received */
    char body[HTTP_BODY_KEEP + 1];  /* the first of them, NUL-terminated */
    int complete;
    const char *error;
};

static void http_reset(struct http_resp *r) {
    r->head_len = 0;
    r->head_done = 0;
    r->status = 0;
    r->content_length = 0;
    r->body_len = 0;
    r->body[0] = 0;
    r->complete = 0;
    r->error = 0;
}

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

/* Whether the header line at `line` is named `name` (lower case); then *value is its value. */
static int http_header_is(const char *line, const char *name, const char **value) {
    int i = 0;
    for (; name[i]; i++)
        if (lower(line[i]) != name[i]) return 0;
    if (line[i] != ':') return 0;
    i++;
    while (line[i] == ' ' || line[i] == '\t') i++;
    *value = line + i;
    return 1;
}

/* The head (status line and headers, ending in an empty line) is complete: read what frames the
   body. Only Content-Length framing is understood, as MMDS uses. */
static void http_parse_head(struct http_resp *r) {
    const char *h = r->head;
    if (!str_eq(h, "HTTP/1.", 7) || h[7] < '0' || h[7] > '9' || h[8] != ' ' || h[9] < '1' || h[9] > '5' || h[10] < '0' || h[10] > '9' ||
        h[11] < '0' || h[11] > '9' || (h[12] != ' ' && h[12] != '\r')) {
        r->error = "malformed HTTP status line";
        return;
    }
    r->status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    int has_length = 0;
    for (const char *line = h; *line;) {
        while (*line && *line != '\n') line++;
        if (!*line) break;
        line++;
        const char *v;
        if (http_header_is(line, "content-length", &v)) {
            uint32_t n = 0;
            int digits = 0;
            for (; *v >= '0' && *v <= '9' && digits < 9; v++, digits++) n = n * 10 + (uint32_t)(*v - '0');
            if (!digits || (*v != '\r' && *v != ' ')) {
                r->error = "malformed Content-Length";
                return;
            }
            r->content_length = n;
            has_length = 1;
        } else if (http_header_is(line, "transfer-encoding", &v)) {
            r->error = "Transfer-Encoding is not supported (only Content-Length)";
            return;
        }
    }
    if (r->status < 200) { /* an interim response (100 Continue): the real one follows */
        r->head_len = 0;
        return;
    }
    if (!has_length && r->status != 204 && r->status != 304) {
        r->error = "response without Content-Length";
        return;
    }
    r->head_done = 1;
    if (r->content_length == 0) r->complete = 1;
}

static void http_feed(struct http_resp *r, const uint8_t *data, uint32_t len) {
    for (uint32_t i = 0; i < len && !r->error; i++) {
        char ch = (char)data[i];
        if (r->complete) {
            r->error = "bytes beyond the end of the response";
        } else if (!r->head_done) {
            if (r->head_len == HTTP_HEAD_MAX) {
                r->error = "response head longer than 1024 bytes";
                break;
            }
            r->head[r->head_len++] = ch;
            r->head[r->head_len] = 0;
            if (r->head_len >= 4 && str_eq(r->head + r->head_len - 4, "\r\n\r\n", 4)) http_parse_head(r);
        } else {
            if (r->body_len < HTTP_BODY_KEEP) r->body[r->body_len] = ch, r->body[r->body_len + 1] = 0;
            if (++r->body_len == r->content_length) r->complete = 1;
        }
    }
}

/* ---- IPv4 and a TCP client connection ---- */

static uint32_t csum_add(uint32_t sum, const uint8_t *p, uint32_t len) {
    for (uint32_t i = 0; i + 1 < len; i += 2) sum += get16(p + i);
    if (len & 1) sum += (uint32_t)p[len - 1] << 8;
    return sum;
}

/* The Internet checksum: the one's complement of the folded sum. Over a received header that
   includes its checksum field, it is 0 when the header is intact. */
static uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Sum of the TCP pseudo-header (addresses, protocol, TCP length). */
static uint32_t tcp_pseudo_sum(uint32_t src, uint32_t dst, uint32_t tcp_len) {
    return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + 6 + tcp_len;
}

static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_OUR_MSS 1460     /* what fits our 2048-byte receive buffers after all headers */
#define TCP_WINDOW 8192      /* we consume in-order bytes as they arrive, so the window stays open */
#define TCP_SNDBUF 1024      /* bytes sent and not yet acknowledged: one request */
#define TCP_RTO_MS 1000      /* first retransmission timeout; doubles on each retry */
#define TCP_MAX_RETRIES 5

enum { TCP_SYN_SENT, TCP_ESTABLISHED };

/*
 * One client connection, driven by polling. Sends: one request at a time (at most TCP_SNDBUF
 * bytes), kept until acknowledged and sent again from snd_una when the retransmission timer
 * expires (go-back-N). Receives: in-order bytes only, each handed to `sink` once; a segment with
 * nothing new (the peer retransmitted) is ACKed again and dropped, a segment ahead of rcv_nxt is
 * dropped with a duplicate ACK, and the peer retransmits it in order. Options: MSS on our SYN; the
 * peer's MSS read from its SYN-ACK; nothing else (no window scaling, timestamps or SACK). The peer's
 * receive window is not tracked: one request of at most 1 KiB fits any window a server offers.
 */
struct tcp {
    struct nic *nic;
    uint8_t peer_mac[6];
    uint32_t peer_ip;
    uint16_t lport, rport;
    int state;
    uint32_t snd_una, snd_nxt, rcv_nxt;
    uint32_t peer_mss;
    uint8_t sndbuf[TCP_SNDBUF]; /* unacknowledged data, starting at sequence number snd_una */
    uint32_t snd_len;
    int fin_sent, fin_acked, peer_fin;
    struct deadline rto;        /* when unacknowledged data (or SYN, or FIN) is sent again */
    uint32_t rto_ms, retries;
    struct http_resp *sink;     /* where received in-order bytes go (0: none are expected) */
    const char *error;          /* why the connection failed; 0 while it works */
    uint16_t ip_id;
    uint32_t retransmits;       /* segments we sent again */
    uint32_t dup_segments;      /* peer segments with nothing new, ACKed again and dropped */
    uint32_t ooo_segments;      /* peer segments beyond rcv_nxt, dropped */
    uint32_t bad_checksums;     /* frames for us dropped for a wrong IPv4 or TCP checksum */
};

/* Sends one segment: `len` data bytes at sequence number `seq`, acknowledging rcv_nxt. */
static void tcp_segment(struct tcp *c, uint8_t flags, uint32_t seq, const uint8_t *data, uint32_t len) {
    uint8_t *e = nic_tx_frame();
    for (int i = 0; i < 6; i++) e[i] = c->peer_mac[i], e[6 + i] = c->nic->mac[i];
    put16(e + 12, ETHERTYPE_IPV4);
    uint32_t opt = (flags & TCP_SYN) ? 4 : 0;
    uint32_t tcp_len = 20 + opt + len;
    uint8_t *ip = e + ETH_HDR;
    ip[0] = 0x45; /* version 4, 20-byte header */
    ip[1] = 0;
    put16(ip + 2, (uint16_t)(20 + tcp_len));
    put16(ip + 4, c->ip_id++);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;            /* TTL */
    ip[9] = 6;             /* TCP */
    put16(ip + 10, 0);
    put32(ip + 12, c->nic->ip);
    put32(ip + 16, c->peer_ip);
    put16(ip + 10, csum_fold(csum_add(0, ip, 20)));
    uint8_t *t = ip + 20;
    put16(t, c->lport);
    put16(t + 2, c->rport);
    put32(t + 4, seq);
    put32(t + 8, (flags & TCP_ACK) ? c->rcv_nxt : 0);
    t[12] = (uint8_t)(((20 + opt) / 4) << 4);
    t[13] = flags;
    put16(t + 14, TCP_WINDOW);
    put16(t + 16, 0);
    put16(t + 18, 0);
    if (opt) { /* MSS option */
        t[20] = 2;
        t[21] = 4;
        put16(t + 22, TCP_OUR_MSS);
    }
    for (uint32_t i = 0; i < len; i++) t[20 + opt + i] = data[i];
    put16(t + 16, csum_fold(csum_add(tcp_pseudo_sum(c->nic->ip, c->peer_ip, tcp_len), t, tcp_len)));
    nic_send(c->nic, ETH_HDR + 20 + tcp_len);
}

static void tcp_send_ack(struct tcp *c) { tcp_segment(c, TCP_ACK, c->snd_nxt, 0, 0); }

/* Sends sndbuf[from..snd_len) (at sequence snd_una + from) in segments of at most the peer's MSS,
   then the FIN if one is due. */
static void tcp_send_from(struct tcp *c, uint32_t from) {
    while (from < c->snd_len) {
        uint32_t n = c->snd_len - from;
        if (n > c->peer_mss) n = c->peer_mss;
        tcp_segment(c, TCP_ACK | TCP_PSH, c->snd_una + from, c->sndbuf + from, n);
        from += n;
    }
    if (c->fin_sent && !c->fin_acked) tcp_segment(c, TCP_FIN | TCP_ACK, c->snd_una + c->snd_len, 0, 0);
}

static int tcp_outstanding(const struct tcp *c) { return c->snd_una != c->snd_nxt; }

static void tcp_arm_rto(struct tcp *c) { c->rto = deadline_in(c->rto_ms); }

/* The retransmission timer expired: send everything unacknowledged again, backing off. */
static void tcp_retransmit(struct tcp *c) {
    if (c->retries++ >= TCP_MAX_RETRIES) {
        c->error = c->state == TCP_SYN_SENT ? "no SYN-ACK: the peer never answered the SYN" : "the peer stopped acknowledging what we sent";
        return;
    }
    c->retransmits++;
    if (c->state == TCP_SYN_SENT)
        tcp_segment(c, TCP_SYN, c->snd_una, 0, 0);
    else
        tcp_send_from(c, 0);
    c->rto_ms *= 2;
    tcp_arm_rto(c);
}

static void tcp_connect(struct tcp *c, struct nic *n, uint32_t peer_ip, uint16_t lport, uint16_t rport) {
    c->nic = n;
    c->peer_ip = peer_ip;
    c->lport = lport;
    c->rport = rport;
    c->state = TCP_SYN_SENT;
    uint32_t iss = (uint32_t)(rdtsc() >> 4); /* differs from boot to boot, as an ISN should */
    c->snd_una = iss;
    c->snd_nxt = iss + 1; /* the SYN takes one sequence number */
    c->rcv_nxt = 0;
    c->peer_mss = 536;   /* RFC 9293 default until the SYN-ACK says otherwise */
    c->snd_len = 0;
    c->fin_sent = c->fin_acked = c->peer_fin = 0;
    c->sink = 0;
    c->error = 0;
    c->ip_id = (uint16_t)iss;
    c->retransmits = c->dup_segments = c->ooo_segments = c->bad_checksums = 0;
    c->rto_ms = TCP_RTO_MS;
    c->retries = 0;
    tcp_segment(c, TCP_SYN, iss, 0, 0);
    tcp_arm_rto(c);
}

/* Queues and sends `len` bytes (all of them fit sndbuf, or the connection fails). */
static void tcp_write(struct tcp *c, const char *data, uint32_t len) {
    if (c->error) return;
    if (c->fin_sent || c->snd_len + len > TCP_SNDBUF) {
        c->error = "request larger than the send buffer";
        return;
    }
    uint32_t from = c->snd_len;
    for (uint32_t i = 0; i < len; i++) c->sndbuf[from + i] = (uint8_t)data[i];
    c->snd_len += len;
    c->snd_nxt += len;
    if (from == 0) { /* nothing was outstanding: the timer starts afresh */
        c->rto_ms = TCP_RTO_MS;
        c->retries = 0;
        tcp_arm_rto(c);
    }
    tcp_send_from(c, from);
}

static void tcp_close(struct tcp *c) {
    if (c->error || c->fin_sent) return;
    c->fin_sent = 1;
    c->snd_nxt++;
    if (c->snd_len == 0) {
        c->rto_ms = TCP_RTO_MS;
        c->retries = 0;
        tcp_arm_rto(c);
    }
    tcp_segment(c, TCP_FIN | TCP_ACK, c->snd_nxt - 1, 0, 0);
}

/* The peer acknowledged up to `ack`: drop what it has from sndbuf. */
static void tcp_acked(struct tcp *c, uint32_t ack) {
    if (!seq_lt(c->snd_una, ack) || seq_lt(c->snd_nxt, ack)) return; /* old or impossible: ignore */
    uint32_t n = ack - c->snd_una;
    if (c->fin_sent && ack == c->snd_nxt) { /* the FIN's sequence number is not in sndbuf */
        c->fin_acked = 1;
        n--;
    }
    for (uint32_t i = n; i < c->snd_len; i++) c->sndbuf[i - n] = c->sndbuf[i];
    c->snd_len -= n;
    c->snd_una = ack;
    c->rto_ms = TCP_RTO_MS; /* progress: a fresh timer for whatever is still outstanding */
    c->retries = 0;
    tcp_arm_rto(c);
}

/* MSS option of a SYN-ACK (options are the bytes between the fixed header and the data). */
static void tcp_read_mss(struct tcp *c, const uint8_t *opt, uint32_t len) {
    for (uint32_t i = 0; i < len;) {
        if (opt[i] == 0) break;                  /* end of options */
        if (opt[i] == 1) { i++; continue; }      /* no-op */
        if (i + 1 >= len || opt[i + 1] < 2 || i + opt[i + 1] > len) break;
        if (opt[i] == 2 && opt[i + 1] == 4) {
            uint32_t mss = get16(opt + i + 2);
            if (mss >= 64) c->peer_mss = mss; /* smaller ones would be absurd; keep the default */
        }
        i += opt[i + 1];
    }
}

/* One received frame: ignored unless it is an intact segment of this connection. */
static void tcp_input(struct tcp *c, const uint8_t *f, uint32_t len) {
    const uint8_t *ip = f + ETH_HDR;
    if (len < ETH_HDR + 20 || get16(f + 12) != ETHERTYPE_IPV4 || (ip[0] >> 4) != 4) goto other;
    uint32_t ihl = (ip[0] & 15u) * 4, total = get16(ip + 2);
    if (ihl < 20 || total < ihl + 20 || ETH_HDR + total > len) goto other;
    if (ip[9] != 6 || get32(ip + 12) != c->peer_ip || get32(ip + 16) != c->nic->ip || (get16(ip + 6) & 0x3fff)) goto other;
    const uint8_t *t = ip + ihl;
    uint32_t tcp_len = total - ihl;
    if (csum_fold(csum_add(0, ip, ihl)) != 0 ||
        csum_fold(csum_add(tcp_pseudo_sum(c->peer_ip, c->nic->ip, tcp_len), t, tcp_len)) != 0) {
        c->bad_checksums++;
        return;
    }
    if (get16(t) != c->rport || get16(t + 2) != c->lport) goto other;
    uint32_t doff = (uint32_t)(t[12] >> 4) * 4;
    if (doff < 20 || doff > tcp_len) goto other;
    uint32_t seq = get32(t + 4), ack = get32(t + 8);
    uint8_t flags = t[13];
    const uint8_t *data = t + doff;
    uint32_t dlen = tcp_len - doff;

    if (c->state == TCP_SYN_SENT) {
        if (flags & TCP_RST) { /* acceptable only if it acknowledges our SYN */
            if ((flags & TCP_ACK) && ack == c->snd_nxt) c->error = "connection refused (the peer answered the SYN with RST)";
        } else if ((flags & (TCP_SYN | TCP_ACK | TCP_RST)) == (TCP_SYN | TCP_ACK) && ack == c->snd_nxt) {
            tcp_read_mss(c, t + 20, doff - 20);
            c->rcv_nxt = seq + 1;
            c->snd_una = ack;
            c->state = TCP_ESTABLISHED;
            tcp_send_ack(c);
        } else {
            c->error = "unexpected segment while waiting for the SYN-ACK";
        }
        return;
    }
    if (flags & TCP_RST) {
        /* Believed only at the sequence number we expect next (RFC 5961), so a stray one cannot
           tear the connection down. */
        if (seq == c->rcv_nxt) c->error = "the peer reset the connection";
        return;
    }
    if (flags & TCP_SYN) {
        /* The SYN-ACK again: our ACK of it was lost or late. */
        if (seq + 1 == c->rcv_nxt) {
            c->dup_segments++;
            tcp_send_ack(c);
        } else {
            c->error = "unexpected SYN on an established connection";
        }
        return;
    }
    if (!(flags & TCP_ACK)) return; /* every segment after the handshake carries an ACK */
    if (seq_lt(c->snd_nxt, ack)) {
        c->error = "the peer acknowledged data we never sent";
        return;
    }
    tcp_acked(c, ack);
    if (dlen == 0 && !(flags & TCP_FIN)) return; /* a bare ACK: nothing to acknowledge back */
    int32_t off = (int32_t)(c->rcv_nxt - seq);   /* bytes of this segment we already have */
    if (off < 0) {
        c->ooo_segments++; /* a gap before it: dropped; the duplicate ACK asks for the gap */
        tcp_send_ack(c);
        return;
    }
    uint32_t fresh = 0;
    if ((uint32_t)off < dlen) {
        fresh = dlen - (uint32_t)off;
        c->rcv_nxt += fresh;
        if (!c->sink) {
            c->error = "data arrived while no response was awaited";
        } else {
            http_feed(c->sink, data + off, fresh);
            if (c->sink->error) c->error = c->sink->error;
        }
    }
    int fin = (flags & TCP_FIN) && !c->peer_fin && seq + dlen == c->rcv_nxt;
    if (fin) { /* the FIN takes one sequence number */
        c->peer_fin = 1;
        c->rcv_nxt++;
    }
    if (!fresh && !fin) c->dup_segments++;
    tcp_send_ack(c);
    return;
other:
    c->nic->other_frames++;
}

/*
 * Processes segments until `done`, a failure, or `ms` milliseconds; retransmits on the way.
 * Returns 1 when done; otherwise c->error says why (`timeout` if the time ran out).
 */
static int tcp_wait(struct tcp *c, int (*done)(const struct tcp *), uint32_t ms, const char *timeout) {
    struct deadline give_up = deadline_in(ms);
    for (;;) {
        if (c->error) return 0;
        if (done(c)) return 1;
        uint32_t len = nic_poll(c->nic);
        if (len) {
            tcp_input(c, net_frame, len);
            continue;
        }
        if (tcp_outstanding(c) && expired(&c->rto)) tcp_retransmit(c);
        if (!c->error && expired(&give_up)) c->error = timeout;
        __asm__ volatile("pause");
    }
}

/* ---- MMDS: token, then metadata, over one keep-alive connection ---- */

/* A request under construction; too long a request is refused, never truncated. */
struct strbuf {
    char s[TCP_SNDBUF];
    uint32_t len;
    int overflow;
};

static void sb_puts(struct strbuf *b, const char *s) {
    for (; *s; s++) {
        if (b->len == sizeof b->s) {
            b->overflow = 1;
            return;
        }
        b->s[b->len++] = *s;
    }
}

static void sb_put_ip(struct strbuf *b, uint32_t ip) {
    for (int i = 0; i < 4; i++) {
        char d[4];
        uint32_t v = (ip >> (24 - 8 * i)) & 0xff;
        int k = 0;
        if (v >= 100) d[k++] = (char)('0' + v / 100);
        if (v >= 10) d[k++] = (char)('0' + v / 10 % 10);
        d[k++] = (char)('0' + v % 10);
        d[k] = 0;
        sb_puts(b, d);
        if (i < 3) sb_puts(b, ".");
    }
}

/* The value after `key` on the command line, up to the next space, into out (at most max - 1
   characters); 0 when the key is absent or the value does not fit. */
static int cmdline_value(const char *key, char *out, int max) {
    for (const char *p = cmdline; p && *p; p++) {
        if (p != cmdline && p[-1] != ' ') continue;
        int i = 0;
        while (key[i] && p[i] == key[i]) i++;
        if (key[i]) continue;
        int n = 0;
        for (const char *v = p + i; *v && *v != ' '; v++) {
            if (n == max - 1) return 0;
            out[n++] = *v;
        }
        out[n] = 0;
        return n > 0;
    }
    return 0;
}

/* Prints `n` bytes on one line: \r, \n, \t and \\ as those two-character escapes, other bytes
   outside printable ASCII as \xHH. */
static void put_escaped(const char *s, uint32_t n) {
    static const char d[] = "0123456789abcdef";
    for (uint32_t i = 0; i < n; i++) {
        uint8_t ch = (uint8_t)s[i];
        if (ch == '\r') puts_("\\r");
        else if (ch == '\n') puts_("\\n");
        else if (ch == '\t') puts_("\\t");
        else if (ch == '\\') puts_("\\\\");
        else if (ch < 0x20 || ch > 0x7e) {
            serial_putc('\\'), serial_putc('x'), serial_putc(d[ch >> 4]), serial_putc(d[ch & 15]);
        } else serial_putc((char)ch);
    }
}

static int tcp_is_established(const struct tcp *c) { return c->state == TCP_ESTABLISHED; }
static int tcp_response_done(const struct tcp *c) { return c->sink->complete || c->peer_fin; }
static int tcp_is_closed(const struct tcp *c) { return c->peer_fin && c->fin_acked; }

static void mmds_fail(const char *stage, const char *why) {
    failures++;
    puts_("not ok - mmds: ");
    puts_(stage);
    puts_(": ");
    puts_(why);
    puts_("\n");
}

/* Sends one request and reads its response into r; 0 (and not ok printed) on failure. */
static int http_exchange(struct tcp *c, struct http_resp *r, const struct strbuf *req, const char *stage) {
    if (req->overflow) {
        mmds_fail(stage, "request longer than 1024 bytes");
        return 0;
    }
    http_reset(r);
    c->sink = r;
    tcp_write(c, req->s, req->len);
    tcp_wait(c, tcp_response_done, 20000, "timed out waiting for the response");
    c->sink = 0;
    if (!c->error && !r->complete) c->error = "the peer closed the connection before the response was complete";
    if (c->error) {
        mmds_fail(stage, c->error);
        return 0;
    }
    return 1;
}

static void put_fact(const char *key, uint64_t v) {
    puts_("# ");
    puts_(key);
    puts_(": ");
    put_dec(v);
    puts_("\n");
}

#define MMDS_PATH_MAX 200
#define MMDS_TOKEN_MAX 200

/*
 * probe.mmds=<ipv4>: ARP for the MMDS address, connect to port 80, then on one connection:
 *   PUT /latest/api/token (X-metadata-token-ttl-seconds: 60)   -> # mmds-token-status: <code>
 *   GET <probe.mmds_path=, default /latest/meta-data/> with the token (and Accept:
 *       application/json unless probe.mmds_accept=text)       -> # mmds-status, # mmds-body
 *   GET of the same path without a token                      -> # mmds-notoken-status
 * and close (FIN both ways). The body line holds the first 256 bytes, escaped (put_escaped);
 * # mmds-body-length has the whole length. When the PUT does not answer 200 there is no token,
 * and the first GET goes without one too (as an IMDSv1 client would). Status codes are reported,
 * not judged: `ok - mmds` means every exchange completed.
 */
static void check_mmds(struct nic *n, uint32_t mmds_ip) {
    static struct tcp c;
    static struct http_resp r;
    static struct strbuf req;
    static char path[MMDS_PATH_MAX + 1], token[MMDS_TOKEN_MAX + 1];
    if (!cmdline_value("probe.mmds_path=", path, sizeof path)) {
        static const char dflt[] = "/latest/meta-data/";
        for (uint32_t i = 0; i < sizeof dflt; i++) path[i] = dflt[i];
    }
    int json = !has_word(cmdline, "probe.mmds_accept=text");

    int arp = arp_resolve(n, mmds_ip, c.peer_mac, 10000);
    if (arp <= 0) {
        mmds_fail("ARP", arp < 0 ? "the transmit queue did not complete" : "no ARP reply for the MMDS address");
        return;
    }
    puts_("# mmds-mac: ");
    put_mac(c.peer_mac);
    puts_("\n");

    uint16_t lport = (uint16_t)(40000 + (rdtsc() >> 8) % 20000);
    tcp_connect(&c, n, mmds_ip, lport, 80);
    if (!tcp_wait(&c, tcp_is_established, 20000, "timed out waiting for the SYN-ACK")) {
        mmds_fail("connect", c.error);
        return;
    }
    put_fact("mmds-local-port", lport);
    put_fact("mmds-peer-mss", c.peer_mss);

    req.len = 0, req.overflow = 0;
    sb_puts(&req, "PUT /latest/api/token HTTP/1.1\r\nHost: ");
    sb_put_ip(&req, mmds_ip);
    sb_puts(&req, "\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n");
    if (!http_exchange(&c, &r, &req, "PUT /latest/api/token")) return;
    put_fact("mmds-token-status", (uint64_t)r.status);
    token[0] = 0;
    if (r.status == 200) {
        uint32_t len = r.body_len;
        while (len > 0 && (r.body[len - 1] == '\n' || r.body[len - 1] == '\r' || r.body[len - 1] == ' ')) len--;
        if (len == 0 || len > MMDS_TOKEN_MAX || r.body_len > HTTP_BODY_KEEP) {
            mmds_fail("PUT /latest/api/token", "the token is empty or longer than 200 bytes");
            return;
        }
        for (uint32_t i = 0; i < len; i++) {
            if (r.body[i] <= ' ' || r.body[i] > '~') {
                mmds_fail("PUT /latest/api/token", "the token holds a byte that cannot go in a header");
                return;
            }
            token[i] = r.body[i];
        }
        token[len] = 0;
        put_fact("mmds-token-length", len);
    }

    for (int with_token = 1; with_token >= 0; with_token--) {
        req.len = 0, req.overflow = 0;
        sb_puts(&req, "GET ");
        sb_puts(&req, path);
        sb_puts(&req, " HTTP/1.1\r\nHost: ");
        sb_put_ip(&req, mmds_ip);
        sb_puts(&req, "\r\n");
        if (json) sb_puts(&req, "Accept: application/json\r\n");
        if (with_token && token[0]) {
            sb_puts(&req, "X-metadata-token: ");
            sb_puts(&req, token);
            sb_puts(&req, "\r\n");
        }
        sb_puts(&req, "\r\n");
        if (!http_exchange(&c, &r, &req, with_token ? "GET" : "GET without token")) return;
        if (with_token) {
            put_fact("mmds-status", (uint64_t)r.status);
            puts_("# mmds-body: ");
            put_escaped(r.body, r.body_len < HTTP_BODY_KEEP ? r.body_len : HTTP_BODY_KEEP);
            puts_("\n");
            put_fact("mmds-body-length", r.body_len);
        } else {
            put_fact("mmds-notoken-status", (uint64_t)r.status);
        }
    }

    tcp_close(&c);
    if (!tcp_wait(&c, tcp_is_closed, 20000, "timed out waiting for the peer's FIN and the ACK of ours")) {
        mmds_fail("close", c.error);
        return;
    }
    put_fact("mmds-retransmits", c.retransmits);
    put_fact("mmds-dup-segments", c.dup_segments);
    put_fact("mmds-ooo-segments", c.ooo_segments);
    put_fact("mmds-bad-checksums", c.bad_checksums);
    ok("mmds");
}

/*
 * The NIC: its MAC, then with probe.ip= and probe.peer= an ARP round trip with the peer, and with
 * probe.ip= and probe.mmds= the MMDS exchange (check_mmds).
 */
/* The first NIC stays open for probe.snapshot=1, which ARPs the peer again after a restore. */
static struct nic snap_nic;
static int snap_nic_open;

static void check_net(uint64_t base) {
    static struct nic later; /* a second NIC's state (it is not used again) */
    struct nic *n = snap_nic_open ? &later : &snap_nic;
    if (!nic_open(n, base)) {
        not_ok("net-init", "the device refused FEATURES_OK");
        return;
    }
    if (n == &snap_nic) snap_nic_open = 1;
    puts_("# net-mac: ");
    put_mac(n->mac);
    puts_("\n");
    n->ip = cmdline_ip("probe.ip=");
    uint32_t peer = cmdline_ip("probe.peer="), mmds = cmdline_ip("probe.mmds=");
    if (!n->ip || (!peer && !mmds)) {
        ok("net-init");
        return;
    }
    if (peer) check_net_arp(n, peer);
    if (mmds) check_mmds(n, mmds);
}

/* ---- virtio-vsock: one connection each way ---- */

struct vsock_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
#define VSOCK_OP_CREDIT_REQUEST 7
#define VSOCK_EVENT_TRANSPORT_RESET 0
#define VSOCK_EVENT_NONE 0xffffffffu /* written into the event buffer before it is posted */

#define VSOCK_RX_BUFS 4
static uint8_t vsock_rx[VSOCK_RX_BUFS][2048] __attribute__((aligned(16)));
static uint8_t vsock_tx[2048] __attribute__((aligned(16)));
static volatile uint32_t vsock_event __attribute__((aligned(16))); /* struct virtio_vsock_event */
static uint64_t vsock_cid;
static uint32_t vsock_fwd;

/* The vsock device, kept for probe.snapshot=1 (base 0: there is none). */
static struct {
    uint64_t base;
    struct vq *rx, *tx, *ev;
    uint16_t rx_seen, ev_seen;
} vs;

static void vsock_post_rx(struct vq *rx, uint16_t id) {
    rx->avail_ring[rx->avail_idx % VQ_SIZE] = id;
    __sync_synchronize();
    rx->avail_idx++;
    __sync_synchronize();
}

/* Gives the device the one event buffer (descriptor 0 of the event queue) and notifies it. The
   device keeps it until it has an event to report; a driver must always leave it one. */
static void vsock_post_event_buffer(void) {
    vsock_event = VSOCK_EVENT_NONE;
    vs.ev->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)&vsock_event, sizeof vsock_event, VRING_DESC_F_WRITE, 0};
    vsock_post_rx(vs.ev, 0);
    mmio_write(vs.base, 0x50, 2);
}

/* Takes every event the device has delivered, giving the buffer straight back (for Firecracker's
   device that notification is also the driver's acknowledgement of a transport reset, after which
   it delivers packets again). Returns how many were TRANSPORT_RESET. */
static int vsock_take_events(void) {
    int resets = 0;
    while (vs.ev->used_idx != vs.ev_seen) {
        __sync_synchronize();
        uint32_t id = vs.ev->used_ring[vs.ev_seen % VQ_SIZE].id;
        vs.ev_seen++;
        if (id == 0 && vsock_event == VSOCK_EVENT_TRANSPORT_RESET) resets++;
        mmio_write(vs.base, 0x64, mmio_read(vs.base, 0x60));
        vsock_post_event_buffer();
    }
    return resets;
}

static int vsock_send(uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags, const char *data, uint32_t len) {
    struct vsock_hdr *h = (struct vsock_hdr *)vsock_tx;
    *h = (struct vsock_hdr){vsock_cid, 2, sport, dport, len, 1, op, flags, 65536, vsock_fwd};
    for (uint32_t i = 0; i < len; i++) vsock_tx[sizeof *h + i] = (uint8_t)data[i];
    vs.tx->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)vsock_tx, (uint32_t)sizeof *h + len, 0, 0};
    return virtio_submit_q(vs.base, vs.tx, 1) >= 0;
}

/* Takes the next packet from the RX queue if one is waiting (any op): copies its header to *h and
   up to `max` bytes of its payload to data (NUL-terminated), re-posts the buffer. 0: none. */
static int vsock_poll(struct vsock_hdr *h, char *data, uint32_t max) {
    struct vq *rx = vs.rx;
    while (rx->used_idx != vs.rx_seen) {
        __sync_synchronize();
        uint32_t id = rx->used_ring[vs.rx_seen % VQ_SIZE].id;
        vs.rx_seen++;
        if (id >= VSOCK_RX_BUFS) continue; /* not a buffer we posted */
        const struct vsock_hdr *in = (const struct vsock_hdr *)vsock_rx[id];
        *h = *in;
        uint32_t n = in->len < max ? in->len : max;
        if (n > sizeof vsock_rx[id] - sizeof *in) n = sizeof vsock_rx[id] - sizeof *in;
        for (uint32_t k = 0; k < n; k++) data[k] = (char)vsock_rx[id][sizeof *in + k];
        data[n] = 0;
        if (in->op == VSOCK_OP_RW) vsock_fwd += in->len;
        vsock_post_rx(rx, (uint16_t)id);
        mmio_write(vs.base, 0x50, 0);
        mmio_write(vs.base, 0x64, mmio_read(vs.base, 0x60));
        return 1;
    }
    return 0;
}

/* Waits for the next packet on the RX queue (any op). */
static int vsock_recv(struct vsock_hdr *h, char *data, uint32_t max) {
    for (uint64_t i = 0; i < 3000000000ull; i++) {
        if (vsock_poll(h, data, max)) return 1;
        __asm__ volatile("pause");
    }
    return 0;
}

static void check_vsock(uint64_t base) {
    uint64_t offered;
    if (vs.base) return; /* one vsock device per VM */
    struct vq *rx = virtio_init_n(base, 0, &offered, 3);
    if (!rx) {
        not_ok("vsock-init", "the device refused FEATURES_OK");
        return;
    }
    vs.base = base;
    vs.rx = rx;
    vs.tx = rx + 1;
    vs.ev = rx + 2;
    vs.rx_seen = rx->used_idx;
    vs.ev_seen = vs.ev->used_idx;
    vsock_cid = (uint64_t)mmio_read(base, 0x100) | ((uint64_t)mmio_read(base, 0x104) << 32);
    puts_("# vsock-cid: ");
    put_dec(vsock_cid);
    puts_("\n");
    for (uint16_t i = 0; i < VSOCK_RX_BUFS; i++) {
        rx->desc[i] = (struct vring_desc){(uint64_t)(uintptr_t)vsock_rx[i], sizeof vsock_rx[i], VRING_DESC_F_WRITE, 0};
        vsock_post_rx(rx, i);
    }
    mmio_write(base, 0x50, 0);
    vsock_post_event_buffer();
    if (has_word(cmdline, "probe.vsock=init")) { /* the device only: no connections now */
        ok("vsock-init");
        return;
    }
    struct vsock_hdr h;
    char data[256];
    uint32_t host_port = 0;

    /* Waits for a packet to guest port `port` with op `op`, noting a host REQUEST for port 5000
       if one arrives meanwhile (the host may connect first). */
#define VSOCK_WAIT(port, want_op)                                                      \
    ({                                                                                 \
        int found_ = 0, done_ = 0;                                                     \
        for (int tries_ = 0; tries_ < 16 && !done_; tries_++) {                        \
            if (!vsock_recv(&h, data, 255)) break;                                     \
            if (h.op == 1 && h.dst_port == 5000) host_port = h.src_port;               \
            if (h.dst_port == (port) && (h.op == (want_op) || h.op == 3)) {            \
                found_ = h.op == (want_op);                                            \
                done_ = 1;                                                             \
            }                                                                          \
        }                                                                              \
        found_;                                                                        \
    })

    /* Guest-initiated: connect to host port 6000 from guest port 1234. */
    vsock_send(1234, 6000, 1, 0, 0, 0);
    if (!VSOCK_WAIT(1234, 2)) {
        not_ok("vsock-guest-connect", "no RESPONSE to the guest's REQUEST for host port 6000");
        return;
    }
    ok("vsock-guest-connect");
    static const char hello[] = "hello host";
    vsock_send(1234, 6000, 5, 0, hello, sizeof hello - 1);
    if (!VSOCK_WAIT(1234, 5)) {
        not_ok("vsock-guest-data", "no data came back from the host");
        return;
    }
    puts_("# vsock-host-replied: ");
    puts_(data);
    puts_("\n");
    ok("vsock-guest-data");
    vsock_send(1234, 6000, 4, 3, 0, 0);

    /* Host-initiated: wait for a REQUEST to guest port 5000 (unless it came already), answer,
       echo what arrives. A new connection: its forwarded-byte count starts again. */
    vsock_fwd = 0;
    if (!host_port) VSOCK_WAIT(5000, 1);
    if (!host_port) {
        not_ok("vsock-host-connect", "no REQUEST from the host for guest port 5000");
        return;
    }
    vsock_send(5000, host_port, 2, 0, 0, 0);
    ok("vsock-host-connect");
    if (!VSOCK_WAIT(5000, 5)) {
        not_ok("vsock-host-data", "no data from the host");
        return;
    }
    puts_("# vsock-host-said: ");
    puts_(data);
    puts_("\n");
    char reply[256] = "pong:";
    uint32_t n = 5;
    for (uint32_t i = 0; data[i] && n < 250; i++) reply[n++] = data[i];
    vsock_send(5000, host_port, 5, 0, reply, n);
    ok("vsock-host-data");
    vsock_send(5000, host_port, 4, 3, 0, 0);
}

static void check_virtio(void) {
    for (const char *p = cmdline; p && *p; p++) {
        const char *key = "virtio_mmio.device=4K@0x";
        int i = 0;
        while (key[i] && p[i] == key[i]) i++;
        if (key[i]) continue;
        const char *q = p + i;
        uint64_t base = parse_hex(&q);
        if (mmio_read(base, 0) != VIRTIO_MAGIC || mmio_read(base, 4) != 2) {
            not_ok("virtio-mmio", "no version 2 virtio-mmio device where the command line says");
            continue;
        }
        uint32_t id = mmio_read(base, 8);
        puts_("# virtio-device: ");
        put_hex(base);
        puts_(" id ");
        put_dec(id);
        puts_("\n");
        if (id == 2) check_block(base);
        else if (id == 4) check_rng(base);
        else if (id == 1) check_net(base);
        else if (id == 19) check_vsock(base);
    }
}

/* With "probe.echo" on the command line: read one line typed on the console and echo it. */
static void check_serial_rx(void) {
    char line[64];
    int n = 0;
    puts_("# type a line: \n");
    for (uint64_t spins = 0; spins < 4000000000ull && n < (int)sizeof(line) - 1; spins++) {
        if (!(inb(COM1 + 5) & 1)) {
            __asm__ volatile("pause");
            continue;
        }
        char c = (char)inb(COM1);
        if (c == '\r' || c == '\n') break;
        line[n++] = c;
    }
    line[n] = 0;
    puts_("# serial-rx: ");
    puts_(line);
    puts_("\n");
    if (n > 0)
        ok("serial-rx");
    else
        not_ok("serial-rx", "nothing arrived on the console");
}

static void reset(void) {
    outb(I8042_COMMAND, I8042_RESET);
}

/* ---- probe.ring3=1: can user space make a system call on this KVM? ----
   Drops to ring 3 (iretq, IOPL 3 so the serial port stays usable there) and executes SYSCALL.
   On KVM that runs guests on hardware the CPU enters LSTAR in ring 0 (CS = the kernel's code
   selector); some instruction-emulating KVMs enter it still at user privilege, so a guest kernel
   can never serve a user program there. The probe prints which, and resets. The detection for
   the Linux guest profile (guest/linux/host.js) reads the verdict line. */

#define R3_KCODE 0x08
#define R3_KDATA 0x10
#define R3_UDATA (0x18 | 3)
#define R3_UCODE (0x20 | 3)
#define R3_TSS 0x28
#define MSR_EFER 0xc0000080
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_SFMASK 0xc0000084

struct tss64 {
    uint32_t reserved0;
    uint64_t rsp[3];
    uint64_t reserved1;
    uint64_t ist[7];
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap;
} __attribute__((packed));

static uint64_t r3_pml4[512] __attribute__((aligned(4096)));
static uint64_t r3_pdpt[512] __attribute__((aligned(4096)));
static uint64_t r3_pd[512] __attribute__((aligned(4096)));
static uint8_t r3_user_stack[4096] __attribute__((aligned(16)));
static uint8_t r3_kernel_stack[4096] __attribute__((aligned(16)));
static struct tss64 r3_tss __attribute__((aligned(16)));
static uint64_t r3_gdt[7] __attribute__((aligned(8)));

void ring3_user(void);
void ring3_syscall_entry(void);
/* The code selector SYSCALL entered LSTAR with (0: not entered). */
volatile uint64_t r3_seen_cs;
void ring3_entered(uint64_t cs);
__asm__(".text\n"
        ".globl ring3_user\n"
        "ring3_user:\n"
        "    syscall\n"
        "    ud2\n"
        ".globl ring3_syscall_entry\n"
        "ring3_syscall_entry:\n"
        "    mov %cs, %edi\n"
        "    mov %rdi, r3_seen_cs(%rip)\n"
        "    test $3, %edi\n"
        "    jnz 2f\n"
        "    call ring3_entered\n"
        /* Still at user privilege: HLT raises #GP, whose handler (ring 0, through the TSS) reports. */
        "2:  hlt\n"
        "    jmp 2b\n");

static void ring3_verdict_exception(const char *what) {
    puts_("# ring3-syscall: ");
    puts_(what);
    puts_("\n");
    not_ok("ring3-syscall", what);
    reset();
    for (;;) __asm__ volatile("hlt");
}

/* Reached from SYSCALL (ring3_syscall_entry) in ring 0, or from the #GP its HLT raised when it
   ran at user privilege, with the code selector SYSCALL entered with. */
void ring3_entered(uint64_t cs) {
    puts_("# ring3-syscall: SYSCALL from ring 3 entered LSTAR with cs=");
    put_hex(cs & 0xffff);
    puts_((cs & 3) == 0 ? " (ring 0)\n" : " (still ring 3)\n");
    if ((cs & 0xffff) == R3_KCODE)
        ok("ring3-syscall");
    else
        not_ok("ring3-syscall", "the system call did not enter the kernel at ring 0: user space cannot make system calls on this KVM");
    reset();
    for (;;) __asm__ volatile("hlt");
}

struct r3_frame {
    uint64_t rip, cs, rflags, rsp, ss;
};

static void r3_where(struct interrupt_frame *f, uint64_t code) {
    const struct r3_frame *fr = (const struct r3_frame *)f;
    puts_("# ring3-syscall: fault at rip=");
    put_hex(fr->rip);
    puts_(" cs=");
    put_hex(fr->cs);
    puts_(" error code=");
    put_hex(code);
    puts_("\n");
}

__attribute__((interrupt)) static void r3_ud(struct interrupt_frame *f) {
    r3_where(f, 0);
    ring3_verdict_exception("#UD (invalid opcode) in ring 3");
}

__attribute__((interrupt)) static void r3_gp(struct interrupt_frame *f, uint64_t code) {
    if (r3_seen_cs) ring3_entered(r3_seen_cs);
    r3_where(f, code);
    ring3_verdict_exception("#GP (general protection) on the way to or in ring 3");
}
__attribute__((interrupt)) static void r3_pf(struct interrupt_frame *f, uint64_t code) {
    r3_where(f, code);
    ring3_verdict_exception("#PF (page fault) on the way to or in ring 3");
}

static void check_ring3(void) {
    __asm__ volatile("cli");
    /* Identity-map the first GiB, user-accessible (2 MiB pages). */
    for (int i = 0; i < 512; i++) r3_pd[i] = ((uint64_t)i << 21) | 0x87;
    r3_pdpt[0] = (uint64_t)(uintptr_t)r3_pd | 0x7;
    r3_pml4[0] = (uint64_t)(uintptr_t)r3_pdpt | 0x7;
    /* Flat segments for both rings and a TSS whose RSP0 takes exceptions raised in ring 3. */
    r3_tss.rsp[0] = (uint64_t)(uintptr_t)(r3_kernel_stack + sizeof r3_kernel_stack);
    r3_tss.iomap = sizeof r3_tss;
    uint64_t tss = (uint64_t)(uintptr_t)&r3_tss, limit = sizeof r3_tss - 1;
    r3_gdt[0] = 0;
    r3_gdt[1] = 0x00af9a000000ffffULL; /* 0x08 kernel code, 64-bit */
    r3_gdt[2] = 0x00cf92000000ffffULL; /* 0x10 kernel data */
    r3_gdt[3] = 0x00cff2000000ffffULL; /* 0x18 user data (DPL 3) */
    r3_gdt[4] = 0x00affa000000ffffULL; /* 0x20 user code, 64-bit (DPL 3) */
    r3_gdt[5] = (limit & 0xffff) | ((tss & 0xffffff) << 16) | (0x89ULL << 40) | (((limit >> 16) & 0xf) << 48) | (((tss >> 24) & 0xff) << 56);
    r3_gdt[6] = tss >> 32;
    struct {
        uint16_t limit;
        uint64_t base;
    } __attribute__((packed)) gdtr = {sizeof r3_gdt - 1, (uint64_t)(uintptr_t)r3_gdt};
    __asm__ volatile("lgdt %0\n"
                     "pushq $0x08\n"
                     "leaq 1f(%%rip), %%rax\n"
                     "pushq %%rax\n"
                     "lretq\n"
                     "1: mov $0x10, %%eax\n"
                     "mov %%eax, %%ds\n"
                     "mov %%eax, %%es\n"
                     "mov %%eax, %%ss\n"
                     "mov $0x28, %%eax\n"
                     "ltr %%ax\n"
                     :
                     : "m"(gdtr)
                     : "rax", "memory");
    set_gate(6, r3_ud);
    set_gate(13, (void (*)(struct interrupt_frame *))(void (*)(void))r3_gp);
    set_gate(14, (void (*)(struct interrupt_frame *))(void (*)(void))r3_pf);
    load_idt();
    uint64_t cr4;
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 &= ~((1ULL << 20) | (1ULL << 21)); /* no SMEP/SMAP: the kernel side runs from user pages */
    __asm__ volatile("mov %0, %%cr4\n"
                     "mov %1, %%cr3\n"
                     :
                     : "r"(cr4), "r"((uint64_t)(uintptr_t)r3_pml4)
                     : "memory");
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | 1); /* SCE: SYSCALL enabled */
    wrmsr(MSR_STAR, ((uint64_t)R3_KDATA << 48) | ((uint64_t)R3_KCODE << 32));
    wrmsr(MSR_LSTAR, (uint64_t)(uintptr_t)ring3_syscall_entry);
    wrmsr(MSR_SFMASK, 0x700); /* TF, IF, DF cleared on entry */
    puts_("# ring3-syscall: entering ring 3\n");
    uint64_t user_rsp = (uint64_t)(uintptr_t)(r3_user_stack + sizeof r3_user_stack);
    __asm__ volatile("pushq %0\n"
                     "pushq %1\n"
                     "pushq $0x3002\n" /* IOPL 3, interrupts off */
                     "pushq %2\n"
                     "pushq %3\n"
                     "iretq\n"
                     :
                     : "i"(R3_UDATA), "r"(user_rsp), "i"(R3_UCODE), "r"((uint64_t)(uintptr_t)ring3_user)
                     : "memory");
    __builtin_unreachable();
}

/* ---- probe.wait=1: stay up after the checks (for fleets of VMs and snapshots) ---- */

#define KBD_VECTOR 0x21
#define I8042_DATA 0x60

static volatile uint32_t kbd_bytes;

/* Any keyboard byte is taken as Ctrl-Alt-Del (the only keys a VMM sends): the guest shuts down
   as a Linux guest would, so a supervisor's graceful stop works on the probe too. */
__attribute__((interrupt)) static void kbd_isr(struct interrupt_frame *frame) {
    (void)frame;
    while (inb(I8042_COMMAND) & 1) {
        (void)inb(I8042_DATA);
        kbd_bytes++;
    }
    lapic_write(LAPIC_EOI, 0);
}

/* Routes the keyboard interrupt (IRQ 1) to kbd_isr on this CPU. */
static void arm_keyboard(void) {
    set_gate(KBD_VECTOR, kbd_isr);
    uint32_t bsp = lapic_read(LAPIC_ID) >> 24;
    ioapic_write(0x10 + 2 * 1 + 1, bsp << 24);
    ioapic_write(0x10 + 2 * 1, KBD_VECTOR); /* IRQ 1: fixed, physical, edge, active high, unmasked */
}

static void wait_forever(void) {
    arm_keyboard();
    puts_("# probe waiting\n");
    /* hlt with interrupts on: an idle vCPU, not a spinning one. */
    while (kbd_bytes == 0) __asm__ volatile("sti; hlt" ::: "memory");
    __asm__ volatile("cli");
    puts_("# probe: ctrl-alt-del\n");
}

/* Parses a number: hex with 0x (parse_hex), else decimal; stops at the first other character. */
static uint64_t parse_num(const char **p) {
    if ((*p)[0] == '0' && ((*p)[1] == 'x' || (*p)[1] == 'X')) {
        *p += 2;
        return parse_hex(p);
    }
    uint64_t v = 0;
    for (; **p >= '0' && **p <= '9'; (*p)++) v = v * 10 + (uint64_t)(**p - '0');
    return v;
}

/* For tests of CPU templates: probe.cpuid=LEAF[.SUBLEAF],... prints those CPUID leaves as the guest
   sees them ("# cpuid-LEAF-SUBLEAF: eax ebx ecx edx"); probe.rdmsr=ADDR,... prints those MSRs
   ("# msr-ADDR: value"; only MSRs the test knows KVM has: a missing one faults). */
static void report_cpu(void) {
    char list[128];
    if (cmdline_value("probe.cpuid=", list, sizeof list)) {
        for (const char *p = list; *p;) {
            uint32_t leaf = (uint32_t)parse_num(&p), sub = 0, r[4];
            if (*p == '.') {
                p++;
                sub = (uint32_t)parse_num(&p);
            }
            while (*p && *p++ != ',') {} /* past the comma (and anything malformed before it) */
            cpuid(leaf, sub, r);
            puts_("# cpuid-");
            put_hex(leaf);
            puts_("-");
            put_hex(sub);
            puts_(":");
            for (int i = 0; i < 4; i++) {
                puts_(" ");
                put_hex(r[i]);
            }
            puts_("\n");
        }
    }
    if (cmdline_value("probe.rdmsr=", list, sizeof list)) {
        for (const char *p = list; *p;) {
            uint32_t msr = (uint32_t)parse_num(&p);
            while (*p && *p++ != ',') {}
            puts_("# msr-");
            put_hex(msr);
            puts_(": ");
            put_hex(rdmsr(msr));
            puts_("\n");
        }
    }
}


/* ---- probe.snapshot=1: state that must survive a snapshot and restore ---- */

/*
 * After the usual checks, with probe.snapshot=1 on the command line (instead of probe.wait=1):
 *
 *   prepare   a pattern over probe.snapshot_mib= MiB (default 4) of RAM the probe does not otherwise
 *             use (from 8 MiB up; every 64-bit word derived from its address and a seed taken
 *             from the TSC and kvm-clock, never zero), a counter, kvm-clock time T0; on a
 *             writable virtio-blk drive a pattern written to sector probe.snapshot_sector=
 *             (default: the last), flushed and read back
 *   "# probe snapshot-ready", then halted (HLT, interrupts on) until a keyboard byte arrives
 *             (Ctrl-Alt-Del through the API): a VMM snapshots the VM here and restores it.
 *             With kvm-clock, a 10 ms LAPIC timer wakes the vCPU during the wait: when kvm-clock's
 *             version has changed (KVM rewrites it when a VMM restores the clock, as a restore
 *             does) it prints "# probe woke: kvm-clock rewritten" and waits on, so a restored
 *             guest says at once that it runs again (bench/snapshot.js times that line)
 *   checks    snapshot-memory (every word), snapshot-counter (the copy in memory equals the copy
 *             the vCPU held in r12 across the wait: registers and memory are of the same moment),
 *             snapshot-kvm-clock (T1 > T0 and still ticking), snapshot-blk-persisted (the sector
 *             written before) and snapshot-blk-write (a write, flush and read of the next sector
 *             down, or up when probe.snapshot_sector= is sector 0), snapshot-rng (64 fresh bytes,
 *             not the ones read before), for vsock "# snapshot-vsock-reset seen|none" (a
 *             TRANSPORT_RESET event: the driver drops its connection state and acknowledges it)
 *             and with probe.snapshot_vsock_port=P snapshot-vsock-connect and snapshot-vsock-echo
 *             (a new connection to host CID 2 port P: one line sent must come back unchanged),
 *             for a NIC with probe.ip= and probe.peer= snapshot-net-arp
 *   "# probe restored: N failed"  (N: every not ok since boot), then reset through the i8042.
 *
 * probe.snapshot_rounds=N runs N rounds (prepare, wait, checks) before the reset;
 * probe.snapshot_loop=1 runs rounds until the VM is stopped. (probe.vsock=init keeps the usual vsock
 * check from needing a host on ports 6000 and 5000.) Rounds after the first rewrite half the
 * pattern's pages with a new seed (odd pages in round 2, even ones in round 3, ...), so a restored
 * diff snapshot must hold both the base's pages and the diff's.
 */
extern char __stack_top[];

#define SNAP_REGION_FLOOR (8ull << 20)
#define SNAP_IDENTITY_MAPPED (1ull << 30)
#define SNAP_PAGE 4096ull
#define SNAP_SECTOR 512

static struct {
    uint32_t round;
    uint64_t region, region_bytes;  /* 0 bytes: no room for the pattern */
    uint64_t seed_for[2];           /* pattern seed of the even and the odd pages */
    volatile uint64_t counter;      /* pages written */
    uint64_t pages_expected;        /* what the counter must say */
    uint64_t t0;                    /* kvm-clock just before the wait */
    int blk_ready;                  /* the sector was written and read back before the wait */
    uint64_t sector, sector2, blk_seed;
} snap;

static uint8_t snap_sector_out[SNAP_SECTOR] __attribute__((aligned(512)));
static uint8_t snap_sector_in[SNAP_SECTOR] __attribute__((aligned(512)));

static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The pattern word at `addr`: never 0, so a page that comes back zeroed is caught. */
static inline uint64_t snap_word(uint64_t addr, uint64_t seed) { return mix64(addr ^ seed) | 1; }

/* A seed no earlier one equals: the TSC and kvm-clock of this moment, mixed. */
static uint64_t snap_new_seed(void) {
    static uint64_t last;
    uint64_t seed;
    do seed = mix64(rdtsc() ^ (kvmclock_ok ? kvmclock_ns() << 17 : 0) ^ last);
    while (seed == last || seed == 0);
    return last = seed;
}

/* probe.KEY=NUMBER (decimal or 0x hex): 1 and *out when present, 0 when absent, -1 (not ok
   snapshot-options printed) when it is not a number. */
static int cmdline_num(const char *key, uint64_t *out) {
    char v[24];
    if (!cmdline_value(key, v, sizeof v)) return 0;
    const char *p = v;
    *out = parse_num(&p);
    if (*p || p == v) {
        puts_("# snapshot-bad-option: ");
        puts_(key);
        puts_("\n");
        not_ok("snapshot-options", "an option's value is not a number (decimal or 0x hex)");
        return -1;
    }
    return 1;
}

/* Where the pattern goes: from 8 MiB (or the end of the probe's image, if higher) in the RAM range
   there, below the identity-mapped first GiB, at most `bytes`. */
static void snap_pick_region(uint64_t bytes) {
    uint64_t start = (uint64_t)(uintptr_t)__stack_top;
    if (start < SNAP_REGION_FLOOR) start = SNAP_REGION_FLOOR;
    start = (start + (2ull << 20) - 1) & ~((2ull << 20) - 1);
    for (int i = 0; i < nranges; i++) {
        if (ranges[i].type != 1) continue;
        uint64_t lo = ranges[i].addr, hi = ranges[i].addr + ranges[i].size - SNAP_PAGE; /* check_memory uses the top */
        if (hi > SNAP_IDENTITY_MAPPED) hi = SNAP_IDENTITY_MAPPED;
        if (lo < start) lo = start;
        lo = (lo + SNAP_PAGE - 1) & ~(SNAP_PAGE - 1);
        if (hi <= lo + 16 * SNAP_PAGE) continue;
        uint64_t n = hi - lo < bytes ? hi - lo : bytes;
        snap.region = lo;
        snap.region_bytes = n & ~(SNAP_PAGE - 1);
        return;
    }
}

/* Writes the pattern with `seed` over the pages of the given parity (-1: all of them). */
static void snap_write_pages(int parity, uint64_t seed) {
    uint64_t pages = snap.region_bytes / SNAP_PAGE;
    for (uint64_t pg = 0; pg < pages; pg++) {
        if (parity >= 0 && (int)(pg & 1) != parity) continue;
        volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)(snap.region + pg * SNAP_PAGE);
        for (uint64_t k = 0; k < SNAP_PAGE / 8; k++) w[k] = snap_word((uint64_t)(uintptr_t)&w[k], seed);
        snap.counter++;
        snap.pages_expected++;
    }
}

/* Words of the region that do not hold the pattern; the first such word, what it held and what it
   should have held go to first, found and want. */
static uint64_t snap_bad_words(uint64_t *first, uint64_t *found, uint64_t *want) {
    uint64_t bad = 0;
    for (uint64_t a = snap.region; a < snap.region + snap.region_bytes; a += 8) {
        uint64_t expect = snap_word(a, snap.seed_for[((a - snap.region) / SNAP_PAGE) & 1]);
        uint64_t got = *(volatile uint64_t *)(uintptr_t)a;
        if (got != expect) {
            if (!bad) *first = a, *found = got, *want = expect;
            bad++;
        }
    }
    return bad;
}

/* The 512 bytes of `sector` for `seed`: a readable tag, the seed and sector number, then
   bytes derived from all three. */
static void snap_sector_pattern(uint8_t *buf, const char *tag, uint64_t sector, uint64_t seed) {
    int i = 0;
    for (; tag[i] && i < 31; i++) buf[i] = (uint8_t)tag[i];
    for (; i < 32; i++) buf[i] = '\n';
    for (int k = 0; k < 8; k++) buf[32 + k] = (uint8_t)(seed >> (8 * k)), buf[40 + k] = (uint8_t)(sector >> (8 * k));
    for (i = 48; i < SNAP_SECTOR; i += 8) {
        uint64_t v = mix64(seed ^ (sector << 20) ^ (uint64_t)i);
        for (int k = 0; k < 8; k++) buf[i + k] = (uint8_t)(v >> (8 * k));
    }
}

#define SNAP_TAG_BEFORE "fc-run probe snapshot sector"
#define SNAP_TAG_AFTER "fc-run probe restored sector"

/* Writes `out` to `sector`, flushes and reads it back into snap_sector_in: 0, or why not. */
static const char *snap_blk_write(uint64_t sector) {
    if (blk_request(snap_blk.base, snap_blk.q, 1, sector, snap_sector_out, SNAP_SECTOR, 0) != 0) return "the write failed";
    if (blk_request(snap_blk.base, snap_blk.q, 4, 0, 0, 0, 0) != 0) return "the flush failed";
    if (blk_request(snap_blk.base, snap_blk.q, 0, sector, snap_sector_in, SNAP_SECTOR, 1) != 0) return "reading it back failed";
    if (!mem_eq(snap_sector_in, snap_sector_out, SNAP_SECTOR)) return "it did not read back what was written";
    return 0;
}

static void snap_prepare_blk(void) {
    snap.blk_ready = 0;
    if (!snap_blk.q) return;
    if (snap_blk.ro) {
        puts_("# snapshot-blk: read-only drive, not written\n");
        return;
    }
    uint64_t cap = snap_blk.capacity, sector = cap - 1;
    int given = cmdline_num("probe.snapshot_sector=", &sector);
    if (given < 0) return;
    if (cap < 2 || sector >= cap) {
        not_ok("snapshot-prepare-blk", "the snapshot sector is beyond the end of the drive (or it has fewer than 2 sectors)");
        return;
    }
    snap.sector = sector;
    snap.sector2 = sector > 0 ? sector - 1 : sector + 1;
    snap.blk_seed = snap_new_seed();
    puts_("# snapshot-blk-sectors: ");
    put_dec(snap.sector);
    puts_(" ");
    put_dec(snap.sector2);
    puts_("\n");
    snap_sector_pattern(snap_sector_out, SNAP_TAG_BEFORE, snap.sector, snap.blk_seed);
    const char *why = snap_blk_write(snap.sector);
    if (why) {
        not_ok("snapshot-prepare-blk", why);
        return;
    }
    snap.blk_ready = 1;
    ok("snapshot-prepare-blk");
}

static void snap_prepare(void) {
    snap.round++;
    put_fact("snapshot-round", snap.round);
    if (snap.round == 1) {
        uint64_t mib = 4;
        if (cmdline_num("probe.snapshot_mib=", &mib) < 0 || mib == 0 || mib > 512) mib = 4;
        snap_pick_region(mib << 20);
    }
    if (!snap.region_bytes) {
        not_ok("snapshot-prepare-memory", "no RAM above 8 MiB (below 1 GiB) to hold the pattern");
    } else {
        uint64_t seed = snap_new_seed();
        int parity = snap.round == 1 ? -1 : (int)(~snap.round & 1); /* round 2: odd pages */
        if (parity < 0) snap.seed_for[0] = snap.seed_for[1] = seed;
        else snap.seed_for[parity] = seed;
        snap_write_pages(parity, seed);
        puts_("# snapshot-memory: ");
        put_hex(snap.region);
        puts_(" ");
        put_hex(snap.region_bytes);
        puts_(" seed ");
        put_hex(seed);
        puts_(parity < 0 ? " all pages\n" : parity ? " odd pages\n" : " even pages\n");
        uint64_t first, found, want;
        if (snap_bad_words(&first, &found, &want)) not_ok("snapshot-prepare-memory", "the pattern did not read back as written");
        else ok("snapshot-prepare-memory");
    }
    snap_prepare_blk();
    if (kvmclock_ok) snap.t0 = kvmclock_ns();
}

#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_DIVIDE 0x3e0
#define TIMER_VECTOR 0x30

/* Halts (interrupts on) until a keyboard byte arrives or kvm-clock's version is no longer `seen`.
   `token` rides in r12 across the wait, and whatever is in r12 afterwards comes back: a restored
   vCPU returns what its registers held. */
static uint64_t snap_halt(uint64_t token, uint32_t seen) {
    register uint64_t held __asm__("r12") = token;
    uint32_t scratch;
    __asm__ volatile("1:\n\t"
                     "sti\n\t"
                     "hlt\n\t"
                     "cli\n\t"
                     "cmpl $0, %2\n\t"
                     "jne 2f\n\t"
                     "movl %3, %1\n\t"
                     "cmpl %1, %4\n\t"
                     "je 1b\n"
                     "2:"
                     : "+r"(held), "=&r"(scratch)
                     : "m"(kbd_bytes), "m"(pvclock.version), "r"(seen)
                     : "memory", "cc");
    return held;
}

/* The wait for the key. With kvm-clock, a periodic 10 ms LAPIC timer (1 GHz APIC bus in KVM,
   divide by 1) wakes the vCPU; a changed kvm-clock version means the VMM set the clock again
   (a restore does): that is said once per change, then the wait goes on. */
static uint64_t snap_halt_until_key(uint64_t token) {
    uint32_t seen = pvclock.version;
    if (kvmclock_ok) {
        set_gate(TIMER_VECTOR, spurious_isr); /* EOI only: the wake-up is what counts */
        lapic_write(LAPIC_TIMER_DIVIDE, 0xb);
        lapic_write(LAPIC_LVT_TIMER, (1u << 17) | TIMER_VECTOR); /* periodic */
        lapic_write(LAPIC_TIMER_INITIAL, 10000000); /* 10 ms */
    }
    uint64_t held = snap_halt(token, seen);
    while (kbd_bytes == 0) {
        seen = pvclock.version;
        puts_("# probe woke: kvm-clock rewritten\n");
        held = snap_halt(held, seen);
    }
    if (kvmclock_ok) {
        lapic_write(LAPIC_TIMER_INITIAL, 0);
        lapic_write(LAPIC_LVT_TIMER, (1u << 16) | TIMER_VECTOR); /* masked */
    }
    return held;
}

static void snap_check_memory(uint64_t held) {
    if (snap.region_bytes) {
        uint64_t first = 0, found = 0, want = 0;
        uint64_t bad = snap_bad_words(&first, &found, &want);
        if (bad) {
            put_fact("snapshot-memory-bad-words", bad);
            puts_("# snapshot-memory-first-bad: ");
            put_hex(first);
            puts_(" holds ");
            put_hex(found);
            puts_(" expected ");
            put_hex(want);
            puts_("\n");
            not_ok("snapshot-memory", "words of the pattern changed across the wait");
        } else {
            ok("snapshot-memory");
        }
    }
    uint64_t counter = snap.counter;
    puts_("# snapshot-counter: ");
    put_dec(counter);
    puts_(" register ");
    put_dec(held);
    puts_(" expected ");
    put_dec(snap.pages_expected);
    puts_("\n");
    if (counter != held) not_ok("snapshot-counter", "the counter in memory differs from the copy the vCPU held in a register");
    else if (counter != snap.pages_expected) not_ok("snapshot-counter", "the counter does not count the pages written");
    else ok("snapshot-counter");
}

static void snap_check_kvmclock(void) {
    if (!kvmclock_ok) {
        puts_("# snapshot-kvm-clock: none\n");
        return;
    }
    uint64_t t1 = kvmclock_ns(), t2 = t1;
    for (int i = 0; i < 1000000 && t2 == t1; i++) t2 = kvmclock_ns();
    puts_("# snapshot-kvm-clock-ns: ");
    put_dec(snap.t0);
    puts_(" ");
    put_dec(t1);
    puts_("\n");
    if (t1 <= snap.t0) {
        not_ok("snapshot-kvm-clock", "kvm-clock after the wait is not later than before it");
    } else if (t2 <= t1) {
        not_ok("snapshot-kvm-clock", "kvm-clock no longer advances");
    } else {
        put_fact("snapshot-waited-ms", (t1 - snap.t0) / 1000000);
        ok("snapshot-kvm-clock");
        return;
    }
    kvmclock_ok = 0; /* deadlines fall back to counting turns: they still end */
}

static void snap_check_blk(void) {
    if (!snap.blk_ready) return;
    snap_sector_pattern(snap_sector_out, SNAP_TAG_BEFORE, snap.sector, snap.blk_seed);
    if (blk_request(snap_blk.base, snap_blk.q, 0, snap.sector, snap_sector_in, SNAP_SECTOR, 1) != 0)
        not_ok("snapshot-blk-persisted", "reading the sector written before the wait failed");
    else if (!mem_eq(snap_sector_in, snap_sector_out, SNAP_SECTOR))
        not_ok("snapshot-blk-persisted", "the sector written before the wait does not hold what was written");
    else
        ok("snapshot-blk-persisted");
    snap_sector_pattern(snap_sector_out, SNAP_TAG_AFTER, snap.sector2, snap_new_seed());
    const char *why = snap_blk_write(snap.sector2);
    if (why) not_ok("snapshot-blk-write", why);
    else ok("snapshot-blk-write");
}

static void snap_check_rng(void) {
    if (!snap_rng.q) return;
    uint8_t *buf = dma[3], before[64];
    for (int i = 0; i < 64; i++) before[i] = buf[i], buf[i] = 0;
    snap_rng.q->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)buf, 64, VRING_DESC_F_WRITE, 0};
    int64_t got = virtio_submit(snap_rng.base, snap_rng.q);
    int nonzero = 0;
    for (int i = 0; i < 64; i++) nonzero += buf[i] != 0;
    put_fact("snapshot-rng-bytes", (uint64_t)(got < 0 ? 0 : got));
    if (got != 64 || nonzero <= 32) not_ok("snapshot-rng", "the entropy device returned no random bytes");
    else if (mem_eq(buf, before, 64)) not_ok("snapshot-rng", "the entropy device returned the bytes it returned before");
    else ok("snapshot-rng");
}

/* Waits for a packet to `lport` from host port `rport`, answering credit requests on the way;
   returns its op (with the payload in data), or 0 when `ms` pass. */
static int snap_vsock_wait(uint32_t lport, uint32_t rport, struct vsock_hdr *h, char *data, uint32_t max, uint32_t ms) {
    struct deadline give_up = deadline_in(ms);
    while (!expired(&give_up)) {
        vsock_take_events(); /* a late reset event is acknowledged, or the device holds packets back */
        if (!vsock_poll(h, data, max)) {
            __asm__ volatile("pause");
            continue;
        }
        if (h->dst_port != lport || h->src_port != rport || h->src_cid != 2) continue;
        if (h->op == VSOCK_OP_CREDIT_REQUEST) {
            vsock_send(lport, rport, VSOCK_OP_CREDIT_UPDATE, 0, 0, 0);
            continue;
        }
        if (h->op == VSOCK_OP_CREDIT_UPDATE) continue;
        return h->op;
    }
    return 0;
}

static void snap_check_vsock(void) {
    if (!vs.base) return;
    /* Firecracker writes the event before it saves the VM; a VMM may also send it on resume. */
    struct deadline grace = deadline_in(200);
    int resets = vsock_take_events();
    while (!resets && !expired(&grace)) {
        __asm__ volatile("pause");
        resets = vsock_take_events();
    }
    puts_(resets ? "# snapshot-vsock-reset seen\n" : "# snapshot-vsock-reset none\n");
    /* What a driver does on a transport reset, and what a closed connection needs anyway: packets
       of earlier connections are dropped, the byte counts start again, the CID is read again. */
    struct vsock_hdr h;
    char data[256];
    uint64_t dropped = 0;
    while (vsock_poll(&h, data, 0)) dropped++;
    vsock_fwd = 0;
    vsock_cid = (uint64_t)mmio_read(vs.base, 0x100) | ((uint64_t)mmio_read(vs.base, 0x104) << 32);
    put_fact("snapshot-vsock-dropped-packets", dropped);
    put_fact("snapshot-vsock-cid", vsock_cid);

    uint64_t port;
    int given = cmdline_num("probe.snapshot_vsock_port=", &port);
    if (given == 0) puts_("# snapshot-vsock-connect: skipped (no probe.snapshot_vsock_port=)\n");
    if (given <= 0) return;
    uint32_t rport = (uint32_t)port, lport = 3000 + snap.round % 1000;
    put_fact("snapshot-vsock-local-port", lport);
    vsock_send(lport, rport, VSOCK_OP_REQUEST, 0, 0, 0);
    int op = snap_vsock_wait(lport, rport, &h, data, 0, 20000);
    if (op != VSOCK_OP_RESPONSE) {
        not_ok("snapshot-vsock-connect", op == VSOCK_OP_RST ? "the host refused the connection (RST)" : "no RESPONSE to the guest's REQUEST");
        if (op) vsock_send(lport, rport, VSOCK_OP_RST, 0, 0, 0);
        return;
    }
    ok("snapshot-vsock-connect");
    char line[64] = "probe snapshot round ";
    uint32_t len = 21;
    {
        char digits[12];
        int nd = 0;
        uint32_t r = snap.round;
        do digits[nd++] = (char)('0' + r % 10), r /= 10;
        while (r && nd < 10);
        while (nd) line[len++] = digits[--nd];
        line[len++] = '\n';
        line[len] = 0;
    }
    vsock_send(lport, rport, VSOCK_OP_RW, 0, line, len);
    char reply[64];
    uint32_t got = 0;
    while (got < len) {
        op = snap_vsock_wait(lport, rport, &h, data, sizeof data - 1, 10000);
        if (op != VSOCK_OP_RW) break;
        for (uint32_t i = 0; i < h.len && i < sizeof data - 1 && got < sizeof reply - 1; i++) reply[got++] = data[i];
    }
    reply[got] = 0;
    puts_("# snapshot-vsock-reply: ");
    put_escaped(reply, got);
    puts_("\n");
    if (got == len && mem_eq((const uint8_t *)reply, (const uint8_t *)line, (int)len)) ok("snapshot-vsock-echo");
    else not_ok("snapshot-vsock-echo", op == VSOCK_OP_RW || op == 0 ? "the host did not echo the line" : "the host closed the connection before echoing the line");
    vsock_send(lport, rport, VSOCK_OP_SHUTDOWN, 3, 0, 0);
}

static void snap_check_net(void) {
    uint32_t peer = cmdline_ip("probe.peer=");
    if (!snap_nic_open || !snap_nic.ip || !peer) return;
    uint8_t mac[6];
    int r = arp_resolve(&snap_nic, peer, mac, 10000);
    if (r <= 0) {
        not_ok("snapshot-net-arp", r < 0 ? "the transmit queue did not complete" : "no ARP reply arrived");
        return;
    }
    puts_("# snapshot-net-peer-mac: ");
    put_mac(mac);
    puts_("\n");
    ok("snapshot-net-arp");
}

static void snapshot_mode(void) {
    uint64_t rounds = 1;
    int loop = has_word(cmdline, "probe.snapshot_loop=1");
    if (cmdline_num("probe.snapshot_rounds=", &rounds) <= 0 || rounds == 0) rounds = 1;
    arm_keyboard();
    for (;;) {
        snap_prepare();
        /* Bytes left from an earlier Ctrl-Alt-Del must not end this wait. */
        while (inb(I8042_COMMAND) & 1) (void)inb(I8042_DATA);
        kbd_bytes = 0;
        puts_("# probe snapshot-ready\n");
        uint64_t held = snap_halt_until_key(snap.counter);
        puts_("# probe: ctrl-alt-del\n");
        snap_check_memory(held);
        snap_check_kvmclock();
        snap_check_blk();
        snap_check_rng();
        snap_check_vsock();
        snap_check_net();
        puts_("# probe restored: ");
        put_dec((uint64_t)failures);
        puts_(" failed\n");
        if (!loop && snap.round >= rounds) return;
    }
}

/* probe.flood=N: N numbered lines of 64 bytes each on the console, each byte sent once the UART
   says it has room (as serial_putc does), for tests of output that waits for a slow reader. */
static void flood(uint64_t lines) {
    for (uint64_t i = 0; i < lines; i++) {
        char line[64];
        int n = 0;
        const char *head = "# flood ";
        while (*head) line[n++] = *head++;
        char digits[12];
        int d = 0;
        uint64_t v = i;
        do digits[d++] = (char)('0' + v % 10), v /= 10; while (v && d < 12);
        for (int k = 0; k < 12 - d; k++) line[n++] = '0';
        while (d) line[n++] = digits[--d];
        line[n++] = ' ';
        while (n < 62) {
            line[n] = (char)('a' + (i + n) % 26);
            n++;
        }
        line[n++] = '\r';
        line[n++] = '\n';
        for (int k = 0; k < n; k++) serial_putc(line[k]);
    }
    puts_("# flood done, busy transmitter seen: ");
    put_dec(serial_busy_polls);
    puts_(" times\n");
}

void probe_main(const void *boot_info, int mode) {
    outb(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC);
    puts_("# fc-run probe guest\n");
    if (read_boot_info(boot_info, mode)) {
        check_cmdline();
        check_e820();
        check_memory();
    }
    if (has_word(cmdline, "probe.ring3=1")) check_ring3();
    check_hypervisor();
    report_cpu();
    check_kvmclock();
    map_mmio_gap();
    check_serial_irq();
    check_smp();
    check_virtio();
    if (has_word(cmdline, "probe.echo")) check_serial_rx();
    puts_("# probe done: ");
    put_dec((uint64_t)failures);
    puts_(" failed\n");
    uint64_t lines;
    if (cmdline_num("probe.flood=", &lines) > 0) flood(lines);
    if (has_word(cmdline, "probe.snapshot=1")) snapshot_mode();
    else if (has_word(cmdline, "probe.wait=1")) wait_forever();
    reset();
}
