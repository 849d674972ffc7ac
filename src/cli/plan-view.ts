import type { BootPlan, DevicePlan } from '../boot/plan';
import { bytes, displayPath, hex, Painter, table } from './format';

function limiterText(name: string, rl: { bandwidth?: { size: number; refill_time_ms: number }; ops?: { size: number; refill_time_ms: number } } | undefined): string[] {
  if (!rl) return [];
  const parts: string[] = [];
  if (rl.bandwidth) parts.push(`${bytes(rl.bandwidth.size)}/${rl.bandwidth.refill_time_ms}ms`);
  if (rl.ops) parts.push(`${rl.ops.size} ops/${rl.ops.refill_time_ms}ms`);
  return [`${name}${parts.join(', ')}`];
}

function backing(d: DevicePlan): string {
  switch (d.kind) {
    case 'block':
      return [displayPath(d.path), d.readOnly ? 'ro' : 'rw', ...(d.root ? ['root'] : []), `cache ${d.cacheType}`, ...limiterText('limit ', d.rateLimiter)].join(', ');
    case 'net':
      return [`tap ${d.tap}`, d.guestMac ? `mac ${d.guestMac}` : 'mac chosen by guest', ...(d.mtu ? [`mtu ${d.mtu}`] : []), ...(d.mmds ? ['mmds'] : []), ...limiterText('rx ', d.rxRateLimiter), ...limiterText('tx ', d.txRateLimiter)].join(', ');
    case 'vsock':
      return `cid ${d.guestCid}, ${displayPath(d.udsPath)}`;
    case 'entropy':
      return ['host getrandom', ...limiterText('limit ', d.rateLimiter)].join(', ');
  }
}

/** The human-readable rendering of `fc-run plan`. */
export function renderPlan(plan: BootPlan, hash: string, c: Painter): string {
  const out: string[] = [];
  const heading = (s: string) => out.push('', c.bold(s));
  const t = plan.cpuTemplate;
  const counts = t.kind === 'none' ? '' : `${t.cpuid.length} CPUID, ${t.msr.length} MSR modifiers`;
  const tpl =
    t.kind === 'none'
      ? 'none'
      : t.kind === 'static'
        ? `static ${t.name} (${counts}; needs ${t.vendor}: ${t.models.map((m) => m.name).join(', ')})`
        : `custom (${counts}, from ${t.source === 'inline' ? 'the spec' : displayPath(t.source)})`;
  out.push(`${c.bold('Boot plan')} for ${displayPath(plan.spec)}`);
  out.push(`  vCPUs         ${plan.vcpus.count}${plan.vcpus.smt ? ' (SMT: 2 threads per core)' : ''}`);
  out.push(`  CPU template  ${tpl}`);
  out.push(`  memory        ${bytes(plan.memory.sizeMib * 1024 * 1024)}`);

  heading('Memory map (e820)');
  out.push(table(['start', 'end', 'size', 'type'], plan.memory.e820.map((e) => [hex(e.start), hex(e.start + e.size), bytes(e.size), e.type]), c));
  out.push(`  MMIO gap ${hex(plan.memory.mmioGap.start)}-${hex(plan.memory.mmioGap.start + plan.memory.mmioGap.size)}; KVM memory slots: ${plan.memory.regions.map((r) => `${hex(r.start)}+${bytes(r.size)}`).join(', ')}`);

  heading('Boot structures');
  const b = plan.boot;
  out.push(
    table(
      ['what', 'address'],
      [
        ['GDT / IDT', `${hex(b.gdt)} / ${hex(b.idt)}`],
        ['page tables (PML4, PDPT, PD)', `${hex(b.pml4)}, ${hex(b.pdpt)}, ${hex(b.pd)} (identity map of ${bytes(b.identityMapped)})`],
        [plan.kernel.entryMode === 'pvh32' ? 'hvm_start_info / modlist / memmap' : 'zero page (boot_params)', plan.kernel.entryMode === 'pvh32' ? `${hex(b.pvhStartInfo)} / ${hex(b.pvhModlist)} / ${hex(b.pvhMemmap)}` : hex(b.zeroPage)],
        ['command line', `${hex(b.cmdline.start)} (up to ${b.cmdline.size} bytes)`],
        ['MP table', `${hex(b.mptable.start)} (${b.mptable.size} bytes)`],
        ['boot stack', hex(b.stackPointer)],
      ],
      c,
    ),
  );

  heading('Kernel');
  const k = plan.kernel;
  out.push(`  ${displayPath(k.path)}: ${k.format}, ${bytes(k.fileSize)}, entry ${hex(k.entry)} (${k.entryMode === 'pvh32' ? 'PVH, 32-bit protected mode' : '64-bit long mode'})`);
  out.push(table(['load at', 'memory', 'from file offset', 'file bytes'], k.segments.map((s) => [hex(s.guestAddr), bytes(s.memSize), hex(s.fileOffset), String(s.fileSize)]), c));
  if (plan.initrd) out.push(`  initrd ${displayPath(plan.initrd.path)}: ${bytes(plan.initrd.size)} at ${hex(plan.initrd.guestAddr)}`);

  heading('Devices');
  const legacy = [
    ['-', 'serial', 'ttyS0', `port ${hex(plan.legacy.serial.port)}`, String(plan.legacy.serial.irq), '8250 UART'],
    ['-', 'i8042', 'i8042', `port ${hex(plan.legacy.i8042.port)}`, String(plan.legacy.i8042.irq), 'reset / Ctrl-Alt-Del'],
  ];
  const virtio = plan.devices.map((d) => [String(d.index), d.kind, d.id, `${hex(d.mmio.start)}+4K`, String(d.irq), backing(d)]);
  out.push(table(['#', 'kind', 'id', 'window', 'irq', 'backing'], [...virtio, ...legacy], c));

  if (plan.mmds) {
    heading('MMDS');
    const contents = plan.mmds.contents ? `${plan.mmds.contents.sizeBytes} bytes from ${displayPath(plan.mmds.contents.source)}` : 'empty';
    out.push(`  ${plan.mmds.version} at ${plan.mmds.ipv4Address} on ${plan.mmds.interfaces.join(', ')}${plan.mmds.imdsCompat ? ' (IMDS compatible)' : ''}; contents: ${contents}`);
  }
  if (plan.logger || plan.metrics) {
    heading('Observability');
    if (plan.logger) out.push(`  log      ${plan.logger.path ? displayPath(plan.logger.path) : 'stderr'} at level ${plan.logger.level}`);
    if (plan.metrics) out.push(`  metrics  ${displayPath(plan.metrics.path)}`);
  }

  heading('Kernel command line');
  out.push(`  ${plan.cmdline}`);
  out.push('', `${c.bold('Plan hash')}  sha256:${hash}`);
  return out.join('\n');
}
