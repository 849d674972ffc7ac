/**
 * The x86_64 guest physical layout fc-run uses. Addresses below 1 MiB hold the boot structures;
 * the kernel loads at 1 MiB or above; [3 GiB, 4 GiB) is the 32-bit MMIO gap (virtio-mmio windows,
 * IOAPIC, LAPIC). Device addresses and IRQs match Firecracker's, so a guest sees the same
 * virtio_mmio.device= entries under either VMM.
 */
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const PAGE_SIZE = 4 * KiB;

export const GDT_START = 0x500;
export const IDT_START = 0x520;
/** hvm_start_info for PVH boot, then the initrd module list and the memory map after it. */
export const PVH_INFO_START = 0x6000;
export const PVH_MODLIST_START = 0x6040;
export const PVH_MEMMAP_START = 0x6080;
/** Linux "zero page" (struct boot_params). */
export const ZERO_PAGE_START = 0x7000;
export const BOOT_STACK_POINTER = 0x8ff0;
/** Identity-mapped page tables: one PML4, one PDPT, one PD of 2 MiB pages covering the first GiB. */
export const PML4_START = 0x9000;
export const PDPT_START = 0xa000;
export const PD_START = 0xb000;
export const IDENTITY_MAPPED_BYTES = 1 * GiB;
export const CMDLINE_START = 0x20000;
/** x86 Linux's COMMAND_LINE_SIZE, including the terminating NUL. */
export const CMDLINE_MAX_BYTES = 2048;
/** The MP table lives where a PC's EBDA would, in the last KiB below 640 KiB. */
export const MPTABLE_START = 0x9fc00;
/** From here up to 1 MiB: reserved (EBDA, legacy VGA and BIOS areas). */
export const RESERVED_LOW_START = 0x9fc00;
export const HIMEM_START = 0x100000;

export const MMIO_GAP_START = 3 * GiB;
export const MMIO_GAP_END = 4 * GiB;
export const IOAPIC_ADDR = 0xfec00000;
export const LAPIC_ADDR = 0xfee00000;

/** virtio-mmio windows: 4 KiB each, the first one past a reserved window at the gap's start. */
export const VIRTIO_MMIO_BASE = MMIO_GAP_START + 0x1000;
export const VIRTIO_MMIO_SIZE = 0x1000;
/** Legacy IRQs 5..23 go to virtio devices; 1 (i8042), 4 (COM1) and 12 (i8042 aux) are fixed. */
export const VIRTIO_IRQ_FIRST = 5;
export const VIRTIO_IRQ_LAST = 23;

export const SERIAL_COM1 = { port: 0x3f8, irq: 4 };
export const I8042 = { port: 0x60, irq: 1 };
/** Firecracker's boot timer: the guest writes 123 to this port when it has booted. */
export const BOOT_TIMER_PORT = 0x3f0;

/** Size of the MP table for n vCPUs: floating pointer, header, CPUs, bus, IOAPIC, 24 IRQ routes, LINT0/1. */
export function mptableSize(vcpus: number): number {
  return 16 + 44 + 20 * vcpus + 8 + 8 + 8 * 24 + 8 * 2;
}

export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

export function alignDown(n: number, align: number): number {
  return Math.floor(n / align) * align;
}

/** Guest RAM as KVM memory slots: below the 32-bit MMIO gap, and the rest above 4 GiB. */
export function guestRamRegions(sizeMib: number): { start: number; size: number }[] {
  const bytes = sizeMib * MiB;
  const regions = [{ start: 0, size: Math.min(bytes, MMIO_GAP_START) }];
  if (bytes > MMIO_GAP_START) regions.push({ start: MMIO_GAP_END, size: bytes - MMIO_GAP_START });
  return regions;
}
