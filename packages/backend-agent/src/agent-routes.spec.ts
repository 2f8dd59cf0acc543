import { Kernel, PLUGIN_API_VERSION, type Connector } from '@devgate/core';
import { of } from 'rxjs';
import { AgentSource } from './agent-source';

// A backend VM's data path turns a host USB passthrough into usbredir: the kernel asks the source
// before anything is exported, so a frontend whose connector cannot take usb-redir is refused first.
describe('AgentSource.routesKind', () => {
  it('says what each kind becomes on a backend VM’s data path', () => {
    const source = new AgentSource({ backend: 'sys-usb', control: '/nonexistent/agent.sock' });
    expect(['block', 'usb-host', 'qemu-device', 'vfio-pci'].map((kind) => source.routesKind(kind))).toEqual([
      'block',
      'usb-redir',
      undefined,
      undefined,
    ]);
    source.dispose();
  });

  it('makes the kernel refuse a USB device for a connector without usb-redir, before exporting', async () => {
    const source = new AgentSource({ backend: 'sys-usb', control: '/nonexistent/agent.sock' });
    const exported: string[] = [];
    source.dataPath = async (_device, spec) => (exported.push(spec.kind), spec);
    const kernel = new Kernel();
    kernel.registerSource(source);
    kernel.registerDriver({
      id: 'usb',
      manifest: { apiVersion: PLUGIN_API_VERSION, description: 'usb' },
      discover: (s) =>
        of([
          {
            port: { devclass: 'usb', backend: s.backend, portId: '1-1' },
            deviceId: '1234:5678',
            interfaces: [],
            data: {},
          },
        ]),
      attachSpec: () => ({ kind: 'usb-host', params: { hostbus: 1, hostport: '1' }, options: {} }),
    });
    const libvirtLike: Connector = {
      id: 'libvirt:test',
      attachKinds: ['block', 'usb-host', 'libvirt-xml'],
      manages: () => true,
      domains: () => ['work'],
      isRunning: async () => true,
      attach: async () => {
        throw new Error('not reached');
      },
      detach: async () => undefined,
      attachments: async () => [],
      dispose() {},
    };
    kernel.registerConnector(libvirtLike);
    const manager = kernel.start();
    const error = await manager
      .attach({ frontend: 'work', port: { devclass: 'usb', backend: 'sys-usb', portId: '1-1' } })
      .catch((e: { code?: string; message: string }) => e);
    expect(error).toMatchObject({ code: 'DG_UNSUPPORTED_ATTACH_KIND' });
    expect((error as Error).message).toContain("libvirt:test cannot perform 'usb-redir' attachments");
    expect(exported).toEqual([]);
    kernel.dispose();
  });
});
