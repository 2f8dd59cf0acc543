/**
 * Throwaway lab domains at a libvirt URI, for demos and tests (`devgate lab up --libvirt NAME`): a
 * small q35 machine with no disk and no OS, a USB controller (qemu-xhci) and two PCIe root ports, so
 * USB disks, USB host devices and virtio disks can be hot-plugged. Each carries devgate's lab mark in
 * its metadata; `lab down --libvirt` destroys and undefines only domains that carry it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Errors, isValidDomainName } from '@devgate/core';
import { type LibvirtTransport, VirshTransport, virshErrors } from './virsh-transport.js';

export const LAB_METADATA_URI = 'urn:devgate:lab:1';

export interface LabDomainOptions {
  /** A USB controller (default true). */
  readonly usb?: boolean;
  /** PCIe root ports for virtio disks (default 2). */
  readonly rootPorts?: number;
  /** KVM instead of TCG: only when asked (DEVGATE_LIBVIRT_KVM=1) and /dev/kvm exists. */
  readonly kvm?: boolean;
  /** devgate's lab mark in the metadata (default true); false makes a domain like a user's own. */
  readonly lab?: boolean;
}

/** The domain XML of a lab domain. */
export function labDomainXml(name: string, options: LabDomainOptions = {}): string {
  if (!isValidDomainName(name)) throw Errors.invalidDomainName({ name });
  const kvm = options.kvm ?? (process.env.DEVGATE_LIBVIRT_KVM === '1' && fs.existsSync('/dev/kvm'));
  const ports = Array.from(
    { length: options.rootPorts ?? 2 },
    (_v, i) => `    <controller type='pci' index='${i + 1}' model='pcie-root-port'/>`,
  ).join('\n');
  const usb = options.usb === false ? 'none' : 'qemu-xhci';
  const mark =
    options.lab === false ? '' : `  <metadata><devgate:lab xmlns:devgate='${LAB_METADATA_URI}'/></metadata>\n`;
  return `<domain type='${kvm ? 'kvm' : 'qemu'}'>
  <name>${name}</name>
${mark}  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='${usb}'/>
    <controller type='pci' index='0' model='pcie-root'/>
${ports}
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

export interface LibvirtLabOptions extends LabDomainOptions {
  readonly uri: string;
  readonly transport?: LibvirtTransport;
}

async function withTransport<T>(options: LibvirtLabOptions, work: (t: LibvirtTransport) => Promise<T>): Promise<T> {
  const transport = options.transport ?? new VirshTransport(options.uri);
  try {
    return await work(transport);
  } finally {
    if (!options.transport) transport.dispose();
  }
}

/** Whether the domain is one of devgate's lab domains (undefined: no such domain). */
async function isLab(transport: LibvirtTransport, name: string): Promise<boolean | undefined> {
  const result = await transport.call([['dumpxml', '--inactive', name]]);
  if (virshErrors(result.stderr).length > 0 && !result.stdout.trim()) return undefined;
  return result.stdout.includes(LAB_METADATA_URI);
}

/**
 * Defines (if needed) and starts lab domains. A name that libvirt already has as a domain that is
 * not devgate's lab domain is refused (DG_DOMAIN_EXISTS); a stopped lab domain is started again.
 */
export async function libvirtLabUp(names: readonly string[], options: LibvirtLabOptions): Promise<string[]> {
  for (const name of names) if (!isValidDomainName(name)) throw Errors.invalidDomainName({ name });
  return withTransport(options, async (transport) => {
    const started: string[] = [];
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-lab-libvirt-'));
    try {
      for (const name of names) {
        const lab = await isLab(transport, name);
        if (lab === false) throw Errors.domainExists({ domain: name, file: options.uri });
        if (lab === undefined) {
          const file = path.join(dir, `${name}.xml`);
          fs.writeFileSync(file, labDomainXml(name, options));
          const defined = await transport.call([['define', file]]);
          const errors = virshErrors(defined.stderr);
          if (errors.length > 0) throw Errors.labStartFailed({ domain: name, reason: errors.join('; ') });
        }
        const state = (await transport.call([['domstate', name]])).stdout.trim();
        if (state !== 'running') {
          const result = await transport.call([['start', name]]);
          const errors = virshErrors(result.stderr);
          if (errors.length > 0) throw Errors.labStartFailed({ domain: name, reason: errors.join('; ') });
        }
        started.push(name);
      }
      return started;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

/** Destroys and undefines lab domains; any other domain is refused (DG_NOT_LAB_DOMAIN). */
export async function libvirtLabDown(names: readonly string[], options: LibvirtLabOptions): Promise<string[]> {
  return withTransport(options, async (transport) => {
    const stopped: string[] = [];
    for (const name of names) {
      const lab = await isLab(transport, name);
      if (lab === undefined) throw Errors.noConnector({ domain: name });
      if (!lab) throw Errors.notLabDomain({ domain: name });
      await transport.call([['destroy', name]]);
      const result = await transport.call([['undefine', name]]);
      const errors = virshErrors(result.stderr);
      if (errors.length > 0) throw Errors.labStartFailed({ domain: name, reason: `undefine: ${errors.join('; ')}` });
      stopped.push(name);
    }
    return stopped;
  });
}
