import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createLoopDisk, disposeAllLoopDisks } from '@devgate/testkit';
import { type AuditJson } from './daemon-api';
import { type RunningTray, startTray } from './tray-module';
import { Desktop, cleanUp, sleep, until } from './testing/desktop';
import { NotifyMonitor, type SeenNotification } from './testing/bus-monitor';
import { LabDaemon } from './testing/lab-daemon';

// Real parts only: Xvfb, a session dbus-daemon, dunst, devgated with this host's devices, paused
// QEMU VMs, and kernel loop devices whose appearance is a real uevent.
jest.setTimeout(90_000);

let desktop: Desktop | undefined;
let monitor: NotifyMonitor | undefined;
let lab: LabDaemon | undefined;
let tray: RunningTray | undefined;
const logs: string[] = [];

beforeAll(async () => {
  desktop = await Desktop.start();
  monitor = await NotifyMonitor.start(desktop.busAddress);
  lab = await LabDaemon.start(['work', 'personal']);
  tray = await startTray({
    socket: lab.config.socket,
    busAddress: desktop.busAddress,
    trayIcon: false,
    log: (m) => logs.push(m),
  });
  await until('the tray to reach devgated', () => tray!.stream.isConnected);
});

afterAll(() =>
  cleanUp(
    () => tray?.dispose(),
    () => monitor?.stop(),
    () => lab?.stop(),
    () => disposeAllLoopDisks(),
    () => desktop?.stop(),
  ),
);

/**
 * Every notification the tray sent that names this text (a loop device's backing file: unique to
 * the test, while loop numbers are reused by other processes on this host).
 */
const about = (text: string, summary?: string): SeenNotification[] =>
  monitor!.seen.filter(
    (n) => n.appName === 'devgate-tray' && n.body.includes(text) && (!summary || n.summary === summary),
  );

const nonEmpty = <T>(list: T[]): T[] | undefined => (list.length > 0 ? list : undefined);

const deviceOf = async (port: string) => (await lab!.api.devices()).find((d) => d.port === port);

describe('desktop notifications (Xvfb, dbus-daemon, dunst, devgated, QEMU)', () => {
  it('announces a new loop device exactly once; "Attach to work" attaches it to the VM', async () => {
    const disk = createLoopDisk({ sizeMiB: 8 });
    const port = `dom0:${disk.name}`;
    const [seen] = await until('the notification', () => nonEmpty(about(disk.image, 'Device available')));

    expect(seen).toMatchObject({
      summary: 'Device available',
      body: `Block_Storage: hosted by dom0 ${disk.image} (8.0 MiB) is available.\nPort ${port} on dom0`,
      icon: 'drive-harddisk',
      hints: { category: 'device.added', urgency: 1, 'desktop-entry': 'devgate-tray' },
      actions: [
        ['attach:work', 'Attach to work'],
        ['attach:personal', 'Attach to personal'],
        ['ignore', 'Ignore'],
      ],
    });

    // On screen: a popup about 420 px wide once dunst has drawn it (the shot is trimmed to it).
    const shot = path.join(desktop!.dir, 'notification.png');
    const size = await until('the popup on screen', async () => {
      await desktop!.screenshot(shot);
      const png = fs.readFileSync(shot);
      const [width, height] = [png.readUInt32BE(16), png.readUInt32BE(20)];
      return png.subarray(1, 4).toString() === 'PNG' && width > 300 && height > 40 && { width, height };
    });
    expect(size.width).toBeLessThan(1024);
    if (process.env.DEVGATE_TRAY_SCREENSHOT) fs.copyFileSync(shot, process.env.DEVGATE_TRAY_SCREENSHOT);

    // As a person would: dunst's context menu, the entry "Attach to work".
    const menu = await desktop!.chooseAction(seen.id, 'attach:work');
    expect(menu).toEqual(
      expect.arrayContaining([
        `#Attach to work (Device available) [${seen.id},attach:work]`,
        `#Attach to personal (Device available) [${seen.id},attach:personal]`,
        `#Ignore (Device available) [${seen.id},ignore]`,
      ]),
    );
    await until('the attachment', async () => (await deviceOf(port))?.attachment?.frontend === 'work');

    // The tray closed it after the action: dunst has it in its history, as it was shown.
    const entry = await until('dunst history', async () => (await desktop!.history()).find((e) => e.id === seen.id));
    expect(entry).toMatchObject({
      appname: 'devgate-tray',
      summary: 'Device available',
      body: seen.body,
      category: 'device.added',
    });
    expect(entry.iconPath).toMatch(/drive-harddisk\.png$/);

    await sleep(500);
    expect(about(disk.image, 'Device available')).toHaveLength(1);
    const audit = await lab!.api.request<{ entries: AuditJson[] }>('GET', '/v1/audit?action=attach&limit=50');
    expect(audit.entries.find((e) => e.portId === disk.name)).toMatchObject({
      outcome: 'ok',
      frontend: 'work',
      actor: expect.stringMatching(/^devgate-tray uid=0/),
    });
    await lab!.api.detach('block', 'work', port);
  });

  it('shows an ask with Allow / Deny; Deny leaves the device detached and is audited', async () => {
    const disk = createLoopDisk({ sizeMiB: 8 });
    const port = `dom0:${disk.name}`;
    await until('the device', async () => (await deviceOf(port))?.hidden === null);
    await lab!.api.request('POST', '/v1/assignments', {
      class: 'block',
      frontend: 'work',
      device: port,
      mode: 'ask-to-attach',
    });
    const seen = await until('the ask', () => about(disk.image).find((n) => n.hints.category === 'device'));
    expect(seen).toMatchObject({
      summary: 'Attach device to work?',
      hints: { category: 'device', urgency: 2 },
      actions: [
        ['allow', 'Allow'],
        ['deny', 'Deny'],
        ['always-allow', 'Always allow'],
        ['always-deny', 'Always deny'],
      ],
    });
    expect(seen.body).toContain(
      `wants to be attached to work.\nPort ${port}; reason: assigned to work (ask-to-attach)`,
    );
    const [pending] = (await lab!.api.asks()).filter((a) => a.device === port);
    expect(pending).toBeDefined();

    await desktop!.chooseAction(seen.id, 'deny');
    const answered = await until('the audited answer', async () =>
      (await lab!.api.request<{ entries: AuditJson[] }>('GET', '/v1/audit?action=answer&limit=50')).entries.find(
        (e) => e.portId === disk.name,
      ),
    );
    await lab!.api.request('POST', '/v1/assignments/remove', { class: 'block', frontend: 'work', device: port });
    expect(answered).toMatchObject({
      outcome: 'denied',
      frontend: 'work',
      actor: expect.stringMatching(/^devgate-tray uid=0.* via devgate\.sock\.rw$/),
    });
    expect((await deviceOf(port))?.attachment).toBeNull();
    expect((await lab!.api.asks()).find((a) => a.id === pending.id)).toBeUndefined();
    // The answered ask's notification is gone from the screen.
    await until('dunst history', async () => (await desktop!.history()).some((e) => e.id === seen.id));
  });

  it('reports a refused attach as a critical device.error notification with the coded error', async () => {
    const disk = createLoopDisk({ sizeMiB: 8 });
    const port = `dom0:${disk.name}`;
    const [seen] = await until('the notification', () => nonEmpty(about(disk.image, 'Device available')));
    // Someone else is faster: the device is in 'personal' when the user picks "Attach to work".
    await lab!.api.attach('block', 'personal', port);
    await desktop!.chooseAction(seen.id, 'attach:work');
    const error = await until('the error', () =>
      monitor!.seen.find((n) => n.hints.category === 'device.error' && n.body.includes(disk.image)),
    );
    expect(error).toMatchObject({
      summary: 'Attaching device failed',
      hints: { category: 'device.error', urgency: 2 },
      expireMs: 0,
      actions: [],
    });
    expect(error.body).toMatch(/ to work failed\.\nError: DG_ALREADY_ATTACHED - .*personal/);
    expect((await deviceOf(port))?.attachment?.frontend).toBe('personal');
    await lab!.api.detach('block', 'personal', port);
  });

  it('keeps a hostile loop file name (markup, escape sequence) inert, from devgated to dunst', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dg-evil-'));
    // No '/' in a file name: the tags stay open, which a markup parser would take even more badly.
    const image = path.join(dir, 'stick <b>bold \u001b[31mred\u001b[0m & <i>co.img');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, 8 * 1024 * 1024);
    const loop = execFileSync('losetup', ['-f', '--show', image], { encoding: 'utf8' }).trim();
    try {
      const port = `dom0:${path.basename(loop)}`;
      const [seen] = await until('the notification', () => nonEmpty(about('stick &lt;b&gt;bold', 'Device available')));
      // What the tray sent: escaped markup, no control characters.
      // eslint-disable-next-line no-control-regex
      expect(seen.body).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
      expect(seen.body).not.toMatch(/<|>|&(?!(amp|lt|gt);)/);
      expect(seen.body).toContain('stick &lt;b&gt;bold red &amp; &lt;i&gt;co.img');

      await desktop!.chooseAction(seen.id, 'ignore');
      const entry = await until('dunst history', async () => (await desktop!.history()).find((e) => e.id === seen.id));
      // What dunst renders: its own <b>summary</b> and our text, whose tags are entities.
      expect(entry.message.startsWith('<b>Device available</b>\n')).toBe(true);
      const ours = entry.message.slice('<b>Device available</b>\n'.length);
      expect(ours).not.toMatch(/<|>/);
      expect(ours).toContain('&lt;b&gt;bold red &amp; &lt;i&gt;co.img');
      // eslint-disable-next-line no-control-regex
      expect(ours).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
      // "Ignore" attaches nothing.
      expect((await deviceOf(port))?.attachment).toBeNull();
    } finally {
      execFileSync('losetup', ['-d', loop]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
