import * as fs from 'node:fs';
import {
  type DevgateError,
  type DeviceManager,
  type DeviceSource,
  type Disposable,
  Errors,
  errorCode,
} from '@devgate/core';
import { defaultRegistryFile } from '@devgate/backend-qemu';
import { type RegistryBackend, readTrustedRegistry, registryBackends } from '@devgate/service';

export interface RegistryWatchOptions {
  /** The domain registry (default: the user's, as the CLI writes it). */
  readonly domains?: string;
  /** Backends the configuration names: those are not the registry's to add or withdraw. */
  readonly taken: (backend: string) => boolean;
  /** A source was added (an agent's incidents are audited from then on). */
  readonly added: (source: DeviceSource) => unknown;
  readonly warn: (fields: object, message: string) => void;
  /** The registry was refused (DG_CONFIG_INVALID): another user could change it. Its last good backends stay. */
  readonly refused: (error: DevgateError) => void;
}

interface Live {
  readonly key: string;
  readonly source: DeviceSource;
  readonly withdraw: Disposable;
}

/**
 * The backend domains the domain registry names, followed while devgated runs: a USB VM created or
 * removed (`devgate usbvm create|remove`), a recorded host brought up or down (`devgate lab up NAME
 * --recording FILE`). The file is checked every second, as the QEMU connector checks it for VMs. A
 * backend that leaves the registry is withdrawn: its devices go, and what of it was attached is
 * detached and audited as a surprise removal. Each read is held to the check devgated's start made
 * (`readTrustedRegistry`): a registry another user could change is refused once per change of the
 * file, and what was read before stays. Its report stands for the QEMU connector's refusals too: the
 * connector reads the same file through the same check, keeps its last good registry and says nothing.
 */
export class RegistryWatch implements Disposable {
  private readonly live = new Map<string, Live>();
  private readonly file: string;
  private version = '';
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly manager: DeviceManager,
    private readonly options: RegistryWatchOptions,
  ) {
    this.file = options.domains ?? defaultRegistryFile();
  }

  /** Adds the registry's backends now, and follows the file from then on. */
  start(intervalMs = 1000): void {
    this.sync();
    this.timer = setInterval(() => {
      // On a timer, a throw would be an uncaught exception, and devgated would exit.
      try {
        if (this.fileVersion() !== this.version) this.sync();
      } catch (error) {
        this.options.warn({ file: this.file, err: error }, 'domain registry watch: a poll failed');
      }
    }, intervalMs);
    this.timer.unref();
  }

  private fileVersion(): string {
    const stat = fs.statSync(this.file, { throwIfNoEntry: false });
    // ctime too: a chmod or chown (which decide whether the file is read at all) changes only that.
    return stat ? `${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.ctimeMs}` : 'absent';
  }

  private sync(): void {
    this.version = this.fileVersion();
    let wanted: RegistryBackend[];
    try {
      wanted = registryBackends(readTrustedRegistry(this.file), this.options.taken);
    } catch (error) {
      if (errorCode(error) === Errors.configInvalid.code)
        return this.tell('refused', () => this.options.refused(error as DevgateError));
      // A registry being rewritten by hand, or broken: keep what is read until it is sound again.
      this.options.warn({ file: this.file, err: error }, 'domain registry unreadable; backends unchanged');
      return;
    }
    const byName = new Map(wanted.map((backend) => [backend.backend, backend]));
    for (const [name, live] of this.live) {
      if (byName.get(name)?.key === live.key) continue;
      this.withdraw(name, live);
    }
    for (const backend of wanted) {
      if (this.live.has(backend.backend)) continue;
      const source = backend.create();
      try {
        this.live.set(backend.backend, { key: backend.key, source, withdraw: this.manager.addSource(source) });
      } catch (error) {
        source.dispose();
        this.options.warn({ backend: backend.backend, err: error }, 'backend not added');
        continue;
      }
      this.tell('added', () => this.options.added(source));
    }
  }

  /** A callback (devgated audits in them) that throws is logged: the other backends are still followed. */
  private tell(callback: string, call: () => unknown): void {
    try {
      call();
    } catch (error) {
      this.options.warn({ file: this.file, err: error }, `domain registry watch: the ${callback} callback failed`);
    }
  }

  private withdraw(name: string, live: Live): void {
    this.live.delete(name);
    live.withdraw.dispose();
    live.source.dispose();
  }

  dispose(): void {
    clearInterval(this.timer);
    for (const [name, live] of [...this.live]) this.withdraw(name, live);
  }
}
