/**
 * A private libvirtd for tests, writing nothing outside its own temp directory: it runs in a mount
 * namespace of its own (`unshare -m`) with overlays on /etc, /run and /var whose upper layers are in
 * the sandbox, so its config, state, logs and the `libvirt-qemu` user it needs stay there. The tests
 * reach it with `qemu:///system?socket=SANDBOX/sock/libvirt-sock` (and, when asked, on a TCP port on
 * 127.0.0.1 without authentication, for the remote-URI test).
 *
 * `stop()` destroys every domain first (QEMU outlives libvirtd), then stops libvirtd by its pid,
 * then removes the sandbox. `stopAllLibvirtds()` does it for every one still running (afterAll).
 * Not part of the published build.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { labDomainXml } from '../libvirt-lab.js';

const live = new Set<PrivateLibvirtd>();

export interface PrivateLibvirtdOptions {
  /** Also listen on 127.0.0.1:PORT for `qemu+tcp://` (no authentication: tests only). */
  readonly tcp?: boolean;
}

export class PrivateLibvirtd {
  readonly uri: string;
  tcpPort?: number;
  private child?: ChildProcess;
  private output = '';

  private constructor(
    readonly dir: string,
    private readonly options: PrivateLibvirtdOptions,
  ) {
    this.uri = `qemu:///system?socket=${dir}/sock/libvirt-sock`;
  }

  /** The remote form of the URI (needs `tcp: true`). */
  get tcpUri(): string {
    if (!this.tcpPort) throw new Error('this libvirtd does not listen on TCP');
    return `qemu+tcp://127.0.0.1:${this.tcpPort}/system`;
  }

  static async start(options: PrivateLibvirtdOptions = {}): Promise<PrivateLibvirtd> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-libvirtd-'));
    const daemon = new PrivateLibvirtd(dir, options);
    live.add(daemon);
    try {
      if (options.tcp) daemon.tcpPort = await freePort();
      await daemon.launch();
    } catch (error) {
      await daemon.stop();
      throw error;
    }
    return daemon;
  }

  /** Starts libvirtd in the sandbox (again, after `kill()`), and waits until it answers. */
  async launch(): Promise<void> {
    const script = path.join(__dirname, 'private-libvirtd.sh');
    const child = spawn('bash', [script, this.dir, String(this.tcpPort ?? '')], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    this.child = child;
    const keep = (chunk: Buffer) => (this.output = (this.output + chunk.toString()).slice(-16_384));
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`libvirtd exited (${child.exitCode}):\n${this.log()}`);
      const ok = await this.virsh(['list', '--all']).then(
        () => true,
        () => false,
      );
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`libvirtd did not answer within 30 s:\n${this.log()}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Stops libvirtd only (its domains go on running, as after a real libvirtd restart). */
  async kill(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const pid = this.pid();
    if (pid) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
    } else child.kill('SIGTERM');
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
    }, 10_000);
    await exited;
    clearTimeout(timer);
    fs.rmSync(path.join(this.dir, 'libvirtd.pid'), { force: true });
  }

  /** Restarts libvirtd; its running domains are picked up again. */
  async restart(): Promise<void> {
    await this.kill();
    await this.launch();
  }

  /** `virsh -c URI ARGS...`; rejects with virsh's stderr. */
  virsh(args: readonly string[], input?: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = execFile('virsh', ['-q', '-c', this.uri, ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
        if (error) reject(new Error(`virsh ${args.join(' ')}: ${stderr || error.message}`));
        else resolve(stdout);
      });
      if (input !== undefined) child.stdin!.end(input);
    });
  }

  /** Defines and starts a domain (paused start is not needed: there is no OS to boot). */
  async startDomain(name: string, options: { usb?: boolean; rootPorts?: number } = {}): Promise<void> {
    const file = path.join(this.dir, `${name}.xml`);
    fs.writeFileSync(file, labDomainXml(name, { ...options, lab: false }));
    await this.virsh(['define', file]);
    await this.virsh(['start', name]);
  }

  /** Where this libvirtd writes its QEMU pid files (the connector's `pidDir`). */
  get pidDir(): string {
    return path.join(this.dir, 'rundir', 'qemu');
  }

  /** The pid of a running domain's QEMU, from libvirt's pid file. */
  qemuPid(name: string): number | undefined {
    try {
      const pid = Number(fs.readFileSync(path.join(this.dir, 'rundir', 'qemu', `${name}.pid`), 'utf8').trim());
      return pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /** Waits (bounded) until `virsh domstate` says `state`. */
  async waitForState(name: string, state: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const now = (await this.virsh(['domstate', name]).catch(() => '')).trim();
      if (now === state) return;
      if (Date.now() > deadline) throw new Error(`${name} is '${now}', not '${state}', after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Domain names. */
  async domains(): Promise<string[]> {
    return (await this.virsh(['list', '--all', '--name'])).split('\n').filter(Boolean);
  }

  log(): string {
    let file = '';
    try {
      file = fs.readFileSync(path.join(this.dir, 'log', 'libvirtd.log'), 'utf8').slice(-8_192);
    } catch {
      // no log yet
    }
    return `${this.output}\n${file}`;
  }

  private pid(): number | undefined {
    try {
      const pid = Number(fs.readFileSync(path.join(this.dir, 'libvirtd.pid'), 'utf8').trim());
      return pid > 0 ? pid : undefined;
    } catch {
      return undefined;
    }
  }

  /** Destroys and undefines every domain, stops libvirtd, removes the sandbox. Safe to call twice. */
  async stop(): Promise<void> {
    live.delete(this);
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      for (const name of await this.domains().catch(() => [] as string[])) {
        await this.virsh(['destroy', name]).catch(() => undefined);
        await this.virsh(['undefine', name]).catch(() => undefined);
      }
      await this.kill();
    }
    // QEMU processes that outlived libvirtd (a test that failed mid-restart): their pid files are here.
    for (const pidFile of findFiles(path.join(this.dir, 'rundir'), /\.pid$/)) {
      const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
      if (pid > 0 && isQemu(pid)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone
        }
      }
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Stops every private libvirtd this process started and has not stopped (for afterAll). */
export async function stopAllLibvirtds(): Promise<void> {
  for (const daemon of [...live]) await daemon.stop();
}

function findFiles(dir: string, pattern: RegExp): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && pattern.test(e.name)) found.push(p);
    }
  };
  walk(dir);
  return found;
}

function isQemu(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith('qemu');
  } catch {
    return false;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}
