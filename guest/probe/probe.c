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
    if (t1 <= t0)
        not_ok("kvm-clock", "kvm-clock did not advance");
    else
        ok("kvm-clock");
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

static struct vq vqs[6];
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
    if (!(mmio_read(base, 0x70) & 8) || nvq + nq > 6) return 0;
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

static void check_block(uint64_t base) {
    uint64_t offered;
    struct vq *q = virtio_init(base, (1ull << 5) | (1ull << 9), &offered);
    if (!q) {
        not_ok("blk-init", "the device refused FEATURES_OK");
        return;
    }
    int ro = (offered >> 5) & 1;
    uint64_t capacity = (uint64_t)mmio_read(base, 0x100) | ((uint64_t)mmio_read(base, 0x104) << 32);
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

static void check_rng(uint64_t base) {
    uint64_t offered;
    struct vq *q = virtio_init(base, 0, &offered);
    if (!q) {
        not_ok("rng", "the device refused FEATURES_OK");
        return;
    }
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

/* ARP for the peer given as probe.peer= through the NIC, from probe.ip=; expects the reply. */
static void check_net(uint64_t base) {
    uint64_t offered;
    struct vq *rx = virtio_init_n(base, 1ull << 5, &offered, 2);
    if (!rx) {
        not_ok("net-init", "the device refused FEATURES_OK");
        return;
    }
    struct vq *tx = rx + 1;
    uint8_t mac[6];
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)(*(volatile uint8_t *)(uintptr_t)(base + 0x100 + (uint64_t)i));
    puts_("# net-mac: ");
    put_mac(mac);
    puts_("\n");
    uint32_t me = cmdline_ip("probe.ip="), peer = cmdline_ip("probe.peer=");
    if (!me || !peer) {
        ok("net-init");
        return;
    }
    /* One receive buffer (descriptor 0 of the RX queue). */
    uint8_t *rbuf = dma[2];
    for (int i = 0; i < 2048; i++) rbuf[i] = 0;
    rx->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)rbuf, 2048, VRING_DESC_F_WRITE, 0};
    uint16_t rx_before = rx->used_idx;
    rx->avail_ring[rx->avail_idx % VQ_SIZE] = 0;
    __sync_synchronize();
    rx->avail_idx++;
    __sync_synchronize();
    mmio_write(base, 0x50, 0);
    /* virtio-net header (12 bytes, zero) + Ethernet + ARP request. */
    uint8_t *f = dma[1];
    for (int i = 0; i < 12 + 42; i++) f[i] = 0;
    uint8_t *e = f + 12;
    for (int i = 0; i < 6; i++) e[i] = 0xff, e[6 + i] = mac[i];
    e[12] = 0x08, e[13] = 0x06;
    uint8_t *a = e + 14;
    a[1] = 1, a[2] = 0x08, a[4] = 6, a[5] = 4, a[7] = 1;
    for (int i = 0; i < 6; i++) a[8 + i] = mac[i];
    for (int i = 0; i < 4; i++) a[14 + i] = (uint8_t)(me >> (24 - 8 * i)), a[24 + i] = (uint8_t)(peer >> (24 - 8 * i));
    tx->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)f, 12 + 42, 0, 0};
    if (virtio_submit_q(base, tx, 1) < 0) {
        not_ok("net-tx", "the transmit queue did not complete");
        return;
    }
    ok("net-tx");
    int others = 0;
    for (uint64_t i = 0; i < 400000000ull && others < 32; i++) {
        if (rx->used_idx == rx_before) {
            __asm__ volatile("pause");
            continue;
        }
        __sync_synchronize();
        rx_before++;
        uint8_t *re = rbuf + 12;
        uint8_t *ra = re + 14;
        if (re[12] == 0x08 && re[13] == 0x06 && ra[7] == 2) {
            puts_("# net-peer-mac: ");
            put_mac(ra + 8);
            puts_("\n");
            puts_("# net-other-frames: ");
            put_dec((uint64_t)others);
            puts_("\n");
            ok("net-arp");
            return;
        }
        /* Something else (IPv6 neighbour discovery, say): give the buffer back and wait on. */
        others++;
        rx->avail_ring[rx->avail_idx % VQ_SIZE] = 0;
        __sync_synchronize();
        rx->avail_idx++;
        __sync_synchronize();
        mmio_write(base, 0x50, 0);
    }
    not_ok("net-arp", "no ARP reply arrived");
}

/* ---- virtio-vsock: one connection each way ---- */

struct vsock_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define VSOCK_RX_BUFS 4
static uint8_t vsock_rx[VSOCK_RX_BUFS][2048] __attribute__((aligned(16)));
static uint8_t vsock_tx[2048] __attribute__((aligned(16)));
static uint64_t vsock_cid;
static uint32_t vsock_fwd;

static void vsock_post_rx(struct vq *rx, uint16_t id) {
    rx->avail_ring[rx->avail_idx % VQ_SIZE] = id;
    __sync_synchronize();
    rx->avail_idx++;
    __sync_synchronize();
}

static int vsock_send(uint64_t base, struct vq *tx, uint32_t sport, uint32_t dport, uint16_t op, uint32_t flags, const char *data, uint32_t len) {
    struct vsock_hdr *h = (struct vsock_hdr *)vsock_tx;
    *h = (struct vsock_hdr){vsock_cid, 2, sport, dport, len, 1, op, flags, 65536, vsock_fwd};
    for (uint32_t i = 0; i < len; i++) vsock_tx[sizeof *h + i] = (uint8_t)data[i];
    tx->desc[0] = (struct vring_desc){(uint64_t)(uintptr_t)vsock_tx, (uint32_t)sizeof *h + len, 0, 0};
    return virtio_submit_q(base, tx, 1) >= 0;
}

/* Waits for the next packet on the RX queue (any op); copies it out and re-posts the buffer. */
static int vsock_recv(uint64_t base, struct vq *rx, uint16_t *seen, struct vsock_hdr *h, char *data, uint32_t max) {
    for (uint64_t i = 0; i < 3000000000ull; i++) {
        if (rx->used_idx == *seen) {
            __asm__ volatile("pause");
            continue;
        }
        __sync_synchronize();
        uint32_t id = rx->used_ring[*seen % VQ_SIZE].id;
        (*seen)++;
        if (id >= VSOCK_RX_BUFS) return 0;
        const struct vsock_hdr *in = (const struct vsock_hdr *)vsock_rx[id];
        *h = *in;
        uint32_t n = in->len < max ? in->len : max;
        for (uint32_t k = 0; k < n; k++) data[k] = (char)vsock_rx[id][sizeof *in + k];
        data[n] = 0;
        if (in->op == 5) vsock_fwd += in->len;
        vsock_post_rx(rx, (uint16_t)id);
        mmio_write(base, 0x50, 0);
        uint32_t isr = mmio_read(base, 0x60);
        mmio_write(base, 0x64, isr);
        return 1;
    }
    return 0;
}

static void check_vsock(uint64_t base) {
    uint64_t offered;
    struct vq *rx = virtio_init_n(base, 0, &offered, 3);
    if (!rx) {
        not_ok("vsock-init", "the device refused FEATURES_OK");
        return;
    }
    struct vq *tx = rx + 1;
    vsock_cid = (uint64_t)mmio_read(base, 0x100) | ((uint64_t)mmio_read(base, 0x104) << 32);
    puts_("# vsock-cid: ");
    put_dec(vsock_cid);
    puts_("\n");
    for (uint16_t i = 0; i < VSOCK_RX_BUFS; i++) {
        rx->desc[i] = (struct vring_desc){(uint64_t)(uintptr_t)vsock_rx[i], sizeof vsock_rx[i], VRING_DESC_F_WRITE, 0};
        vsock_post_rx(rx, i);
    }
    mmio_write(base, 0x50, 0);
    uint16_t seen = 0;
    struct vsock_hdr h;
    char data[256];
    uint32_t host_port = 0;

    /* Waits for a packet to guest port `port` with op `op`, noting a host REQUEST for port 5000
       if one arrives meanwhile (the host may connect first). */
#define VSOCK_WAIT(port, want_op)                                                      \
    ({                                                                                 \
        int found_ = 0, done_ = 0;                                                     \
        for (int tries_ = 0; tries_ < 16 && !done_; tries_++) {                        \
            if (!vsock_recv(base, rx, &seen, &h, data, 255)) break;                    \
            if (h.op == 1 && h.dst_port == 5000) host_port = h.src_port;               \
            if (h.dst_port == (port) && (h.op == (want_op) || h.op == 3)) {            \
                found_ = h.op == (want_op);                                            \
                done_ = 1;                                                             \
            }                                                                          \
        }                                                                              \
        found_;                                                                        \
    })

    /* Guest-initiated: connect to host port 6000 from guest port 1234. */
    vsock_send(base, tx, 1234, 6000, 1, 0, 0, 0);
    if (!VSOCK_WAIT(1234, 2)) {
        not_ok("vsock-guest-connect", "no RESPONSE to the guest's REQUEST for host port 6000");
        return;
    }
    ok("vsock-guest-connect");
    static const char hello[] = "hello host";
    vsock_send(base, tx, 1234, 6000, 5, 0, hello, sizeof hello - 1);
    if (!VSOCK_WAIT(1234, 5)) {
        not_ok("vsock-guest-data", "no data came back from the host");
        return;
    }
    puts_("# vsock-host-replied: ");
    puts_(data);
    puts_("\n");
    ok("vsock-guest-data");
    vsock_send(base, tx, 1234, 6000, 4, 3, 0, 0);

    /* Host-initiated: wait for a REQUEST to guest port 5000 (unless it came already), answer,
       echo what arrives. A new connection: its forwarded-byte count starts again. */
    vsock_fwd = 0;
    if (!host_port) VSOCK_WAIT(5000, 1);
    if (!host_port) {
        not_ok("vsock-host-connect", "no REQUEST from the host for guest port 5000");
        return;
    }
    vsock_send(base, tx, 5000, host_port, 2, 0, 0, 0);
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
    vsock_send(base, tx, 5000, host_port, 5, 0, reply, n);
    ok("vsock-host-data");
    vsock_send(base, tx, 5000, host_port, 4, 3, 0, 0);
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
static int has_word(const char *hay, const char *word) {
    for (const char *p = hay; p && *p; p++) {
        int i = 0;
        while (word[i] && p[i] == word[i]) i++;
        if (!word[i] && (p[i] == 0 || p[i] == ' ') && (p == hay || p[-1] == ' ')) return 1;
    }
    return 0;
}

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

void probe_main(const void *boot_info, int mode) {
    outb(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC);
    puts_("# fc-run probe guest\n");
    if (read_boot_info(boot_info, mode)) {
        check_cmdline();
        check_e820();
        check_memory();
    }
    check_hypervisor();
    check_kvmclock();
    map_mmio_gap();
    check_serial_irq();
    check_smp();
    check_virtio();
    if (has_word(cmdline, "probe.echo")) check_serial_rx();
    puts_("# probe done: ");
    put_dec((uint64_t)failures);
    puts_(" failed\n");
    reset();
}
