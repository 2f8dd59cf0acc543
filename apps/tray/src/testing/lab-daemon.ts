/**
 * devgated in-process for tests: this host's real devices (loop devices appear through kernel
 * uevents), real paused QEMU lab VMs, and the API on Unix sockets in a temporary directory.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { labDown, labUp } from '@devgate/backend-qemu';
import { type DaemonConfig, Devgated } from '@devgate/daemon';
import { DaemonApi } from '../daemon-api.js';

export class LabDaemon {
  daemon?: Devgated;
  readonly api: DaemonApi;

  private constructor(
    readonly dir: string,
    readonly config: DaemonConfig,
  ) {
    this.api = new DaemonApi(config.socket, 30_000);
  }

  static async start(vms: readonly string[], options: { askTimeoutSeconds?: number } = {}): Promise<LabDaemon> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dg-tray-'));
    const registry = path.join(dir, 'domains.json');
    const config: DaemonConfig = {
      socket: path.join(dir, 'run', 'devgate.sock'),
      stateDir: path.join(dir, 'state'),
      domains: registry,
      backends: { dom0: { source: 'local' } },
      access: { users: [], groups: [] },
      askTimeoutSeconds: options.askTimeoutSeconds ?? 60,
    };
    const lab = new LabDaemon(dir, config);
    try {
      if (vms.length > 0) await labUp(vms, { registryFile: registry, stateDir: path.join(dir, 'lab') });
      await lab.startDaemon();
      return lab;
    } catch (error) {
      await lab.stop();
      throw error;
    }
  }

  async startDaemon(): Promise<void> {
    this.daemon = await Devgated.start(this.config, pino({ level: 'silent' }));
  }

  async stopDaemon(): Promise<void> {
    const daemon = this.daemon;
    this.daemon = undefined;
    // Workaround: Devgated.stop() closes its HTTP servers before it ends the event streams, and a
    // server's close waits for every open response, so stop() never returns while a client (the
    // tray) holds /v1/events open. Ending the streams first is what stop() should do itself.
    daemon?.events.complete();
    await daemon?.stop();
  }

  async stop(): Promise<void> {
    await this.stopDaemon().catch(() => undefined);
    if (fs.existsSync(this.config.domains!)) {
      await labDown(undefined, { registryFile: this.config.domains }).catch(() => undefined);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
