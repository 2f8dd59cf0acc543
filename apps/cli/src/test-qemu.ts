import { QemuConnector } from '@devgate/backend-qemu';

/** The block nodes a lab VM's QEMU has from devgate, as QEMU itself says. QMP serves one client: closed after. */
export async function devgateBlockFiles(registryFile: string, vm: string): Promise<string[]> {
  const connector = new QemuConnector({ registryFile });
  try {
    return (await connector.queryBlock(vm))
      .filter((b) => b.inserted?.['node-name']?.startsWith('dg-'))
      .map((b) => b.inserted!.file);
  } finally {
    connector.dispose();
  }
}
