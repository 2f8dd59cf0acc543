/**
 * A real desktop session for tests: Xvfb, a private session dbus-daemon and dunst (the
 * notification server), started from the test and stopped even when it fails. A missing component
 * is an error, never a skip: `.ci/run` installs them.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DBusConnection } from '../dbus.js';

export interface DesktopOptions {
  /** Default true. Without it there is no display (and no dunst). */
  readonly xvfb?: boolean;
  /** Default true (needs xvfb). */
  readonly dunst?: boolean;
  /** Xvfb screen size; default 1024x768. */
  readonly screen?: string;
}

/** One notification as `dunstctl history` reports it. */
export interface DunstEntry {
  readonly id: number;
  readonly appname: string;
  readonly summary: string;
  readonly body: string;
  /** What dunst renders: its format applied, as Pango markup. */
  readonly message: string;
  readonly category: string;
  readonly iconPath: string;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export class Desktop {
  private constructor(
    readonly dir: string,
    readonly busAddress: string,
    readonly display: string | undefined,
    private readonly children: ChildProcess[],
  ) {}

  /** Environment for a program that should run in this session. */
  get env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      DBUS_SESSION_BUS_ADDRESS: this.busAddress,
      ...(this.display ? { DISPLAY: this.display } : {}),
    };
  }

  static async start(options: DesktopOptions = {}): Promise<Desktop> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dg-desk-'));
    const children: ChildProcess[] = [];
    try {
      let display: string | undefined;
      if (options.xvfb !== false) {
        const xvfb = track(
          spawn('Xvfb', ['-displayfd', '3', '-screen', '0', `${options.screen ?? '1024x768'}x24`, '-nolisten', 'tcp'], {
            stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
          }),
          children,
        );
        const number = await firstLine(xvfb, xvfb.stdio[3] as NodeJS.ReadableStream, 'Xvfb', 'xvfb');
        display = `:${number}`;
      }
      const config = path.join(dir, 'bus.conf');
      fs.writeFileSync(config, busConfig(path.join(dir, 'bus')));
      const daemon = track(
        spawn('dbus-daemon', [`--config-file=${config}`, '--nofork', '--print-address=1'], {
          stdio: ['ignore', 'pipe', 'pipe'],
        }),
        children,
      );
      const busAddress = await firstLine(daemon, daemon.stdout!, 'dbus-daemon', 'dbus');
      const desktop = new Desktop(dir, busAddress, display, children);
      if (options.dunst !== false && display) await desktop.startDunst();
      return desktop;
    } catch (error) {
      await stopAll(children);
      fs.rmSync(dir, { recursive: true, force: true });
      throw error;
    }
  }

  private async startDunst(): Promise<void> {
    const menu = path.join(this.dir, 'fake-dmenu.sh');
    // dunst's context menu runs "dmenu" with the actions on stdin and reads the chosen line back.
    fs.writeFileSync(
      menu,
      `#!/bin/sh\ncat > "${this.dir}/dmenu-input.tmp"\nmv "${this.dir}/dmenu-input.tmp" "${this.dir}/dmenu-input.txt"\n` +
        `grep -m1 -F -- "$(cat "${this.dir}/pick")" "${this.dir}/dmenu-input.txt"\nexit 0\n`,
      { mode: 0o755 },
    );
    const rc = path.join(this.dir, 'dunstrc');
    fs.writeFileSync(
      rc,
      [
        '[global]',
        `    dmenu = ${menu}`,
        '    width = 420',
        '    origin = top-right',
        '    offset = 10x10',
        '    font = DejaVu Sans 10',
        '    frame_width = 2',
        '    padding = 10',
        '    horizontal_padding = 10',
        '    icon_position = left',
        '    max_icon_size = 48',
        '    icon_path = /usr/share/icons/Adwaita/48x48/devices/:/usr/share/icons/Adwaita/48x48/status/:/usr/share/icons/Adwaita/48x48/legacy/',
        '    show_indicators = yes',
        '    timeout = 0',
        '[urgency_low]',
        '    timeout = 0',
        '[urgency_normal]',
        '    timeout = 0',
        '[urgency_critical]',
        '    timeout = 0',
        '',
      ].join('\n'),
    );
    const dunst = track(
      spawn('dunst', ['-config', rc], { env: this.env, stdio: ['ignore', 'ignore', 'pipe'] }),
      this.children,
    );
    let stderr = '';
    dunst.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const spawned = new Promise<void>((resolve, reject) => {
      dunst.once('error', (error: NodeJS.ErrnoException) =>
        reject(new Error(error.code === 'ENOENT' ? 'dunst is not installed (apt-get install dunst)' : error.message)),
      );
      dunst.once('spawn', resolve);
    });
    await spawned;
    const bus = await DBusConnection.connect(this.busAddress);
    try {
      const deadline = Date.now() + 10_000;
      while (!(await bus.nameOwner('org.freedesktop.Notifications'))) {
        if (dunst.exitCode !== null) throw new Error(`dunst exited (${dunst.exitCode}): ${stderr.trim()}`);
        if (Date.now() > deadline) throw new Error(`dunst did not take org.freedesktop.Notifications: ${stderr}`);
        await sleep(25);
      }
    } finally {
      bus.dispose();
    }
  }

  /** Runs dunstctl in this session. */
  dunstctl(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) =>
      execFile('dunstctl', args, { env: this.env, timeout: 10_000 }, (error, stdout, stderr) =>
        error ? reject(new Error(`dunstctl ${args.join(' ')}: ${error.message} ${stderr}`)) : resolve(stdout),
      ),
    );
  }

  async history(): Promise<DunstEntry[]> {
    const parsed = JSON.parse(await this.dunstctl('history')) as {
      data: Record<string, { data: unknown }>[][];
    };
    return (parsed.data[0] ?? []).map((entry) => {
      const field = (name: string) => entry[name]?.data;
      return {
        id: field('id') as number,
        appname: String(field('appname') ?? ''),
        summary: String(field('summary') ?? ''),
        body: String(field('body') ?? ''),
        message: String(field('message') ?? ''),
        category: String(field('category') ?? ''),
        iconPath: String(field('icon_path') ?? ''),
      };
    });
  }

  /**
   * Chooses an action of a displayed notification the way a person does, through dunst's context
   * menu (a fake dmenu picks the line ending in `[id,key]`). Returns the menu dunst offered.
   */
  async chooseAction(id: number, key: string): Promise<string[]> {
    const input = path.join(this.dir, 'dmenu-input.txt');
    fs.rmSync(input, { force: true });
    fs.writeFileSync(path.join(this.dir, 'pick'), `[${id},${key}]`);
    await this.dunstctl('context');
    const deadline = Date.now() + 5000;
    while (!fs.existsSync(input)) {
      if (Date.now() > deadline) throw new Error('dunst did not open its context menu');
      await sleep(20);
    }
    return fs.readFileSync(input, 'utf8').split('\n').filter(Boolean);
  }

  /** A PNG of the screen, trimmed to what is drawn on it (the notifications). */
  async screenshot(file: string): Promise<void> {
    if (!this.display) throw new Error('no display');
    await new Promise<void>((resolve, reject) =>
      execFile(
        'import',
        ['-display', this.display!, '-window', 'root', '-trim', '+repage', file],
        { env: this.env, timeout: 20_000 },
        (error, _out, stderr) => (error ? reject(new Error(`import: ${error.message} ${stderr}`)) : resolve()),
      ),
    );
  }

  async stop(): Promise<void> {
    await stopAll(this.children);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function busConfig(socket: string): string {
  return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=${socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`;
}

function track(child: ChildProcess, children: ChildProcess[]): ChildProcess {
  children.push(child);
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

/** The first line a process writes on `stream`; fails if it cannot start or exits first. */
function firstLine(child: ChildProcess, stream: NodeJS.ReadableStream, what: string, pkg: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => reject(new Error(`${what} did not start within 10 s: ${stderr}`)), 10_000);
    child.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(error.code === 'ENOENT' ? `${what} is not installed (apt-get install ${pkg})` : error.message));
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}): ${stderr.trim()}`));
    });
    stream.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      const newline = text.indexOf('\n');
      if (newline >= 0) {
        clearTimeout(timer);
        resolve(text.slice(0, newline).trim());
      }
    });
  });
}

async function stopAll(children: ChildProcess[]): Promise<void> {
  await Promise.all(
    children.reverse().map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve('timeout'), 3000)));
      const outcome = await Promise.race([exited, timeout]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        child.kill('SIGKILL');
        await exited;
      }
    }),
  );
  children.length = 0;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a value (not undefined/false) or `timeoutMs` passes. */
export async function until<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 10_000,
): Promise<Exclude<T, false | undefined>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value as Exclude<T, false | undefined>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** Runs every cleanup step even when one fails; then throws the first failure. */
export async function cleanUp(...steps: (() => unknown)[]): Promise<void> {
  let first: unknown;
  for (const step of steps) {
    try {
      await step();
    } catch (error) {
      first ??= error;
    }
  }
  if (first) throw first;
}
