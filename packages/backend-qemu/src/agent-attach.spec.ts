import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { type Port } from '@devgate/core';
import { QemuConnector } from './qemu-connector.js';
import { labDown, labUp } from './lab.js';
import { decodeQdevId, planBlockAttach, planUsbRedirAttach } from './qemu-attach.js';

// The attach specs of a backend VM's devices (ADR 0008), against real QEMU (a paused lab VM): an
// NBD export becomes a block node of driver nbd (the host's kernel never sees a block device), and a
// USB device becomes usb-redir on a chardev connected to the export's socket, with a filter that
// lets only the listed vendor:product through. Detach takes both away again.
jest.setTimeout(60_000);

let dir: string;
let registryFile: string;
let connector: QemuConnector;
let nbd: ChildProcess | undefined;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-agent-attach-'));
  registryFile = path.join(dir, 'domains.json');
  await labUp(['work'], { registryFile, stateDir: path.join(dir, 'lab') });
  connector = new QemuConnector({ registryFile });
});

afterAll(async () => {
  connector?.dispose();
  nbd?.kill('SIGKILL');
  await labDown(undefined, { registryFile }).catch(() => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

const stick: Port = { devclass: 'block', backend: 'sys-usb', portId: 'sda1' };
const keyboard: Port = { devclass: 'usb', backend: 'sys-usb', portId: '1-2' };

it('plans an NBD block node, read-only when asked, and a usb-redir device with a filter', () => {
  const plan = planBlockAttach(
    stick,
    { kind: 'block', params: { readOnly: true, nbdSocket: '/run/x/export-0.sock', nbdExport: 'e1' }, options: {} },
    'id',
    'xvdi',
  );
  expect(plan.blockdev).toEqual({
    driver: 'nbd',
    'node-name': 'dg-xvdi',
    server: { type: 'unix', path: '/run/x/export-0.sock' },
    export: 'e1',
    'read-only': true,
  });
  const redir = planUsbRedirAttach(
    keyboard,
    { kind: 'usb-redir', params: { socket: '/run/x/export-1.sock', vendorid: 0x0627, productid: 1 }, options: {} },
    '0627:0001::u030101',
  );
  expect(redir.device).toMatchObject({
    driver: 'usb-redir',
    chardev: redir.qdevId,
    filter: '-1:0x0627:0x0001:-1:1|-1:-1:-1:-1:0',
  });
  expect(decodeQdevId(redir.qdevId)).toMatchObject({ c: 'usb', b: 'sys-usb', p: '1-2', d: '0627:0001::u030101' });
  expect(() =>
    planUsbRedirAttach(
      keyboard,
      { kind: 'usb-redir', params: { socket: 'relative.sock', vendorid: 1, productid: 1 }, options: {} },
      'x',
    ),
  ).toThrow(/absolute path/);
});

it('attaches an NBD export as a USB stick and detaches it, leaving no block node', async () => {
  const image = path.join(dir, 'stick.img');
  fs.writeFileSync(image, Buffer.alloc(4 * 1024 * 1024));
  const socket = path.join(dir, 'nbd.sock');
  // qemu-nbd serving a file: no block device on this host, as with a backend VM's export.
  nbd = spawn(
    'qemu-nbd',
    ['--persistent', '--read-only', '--format=raw', '--export-name=e1', `--socket=${socket}`, image],
    {
      stdio: 'ignore',
    },
  );
  await waitForSocket(socket);
  const attachment = await connector.attach(
    'work',
    stick,
    { kind: 'block', params: { readOnly: true, nbdSocket: socket, nbdExport: 'e1' }, options: { 'read-only': 'yes' } },
    'stick-id',
  );
  expect(attachment.options).toEqual({ 'read-only': 'yes', 'frontend-dev': 'xvdi' });
  const nodes = await connector.execute<{ 'node-name'?: string; drv: string; ro: boolean }[]>(
    'work',
    'query-named-block-nodes',
    {
      flat: true,
    },
  );
  expect(nodes).toContainEqual(expect.objectContaining({ 'node-name': 'dg-xvdi', drv: 'nbd', ro: true }));
  expect((await connector.attachments()).map((a) => a.port)).toContainEqual(stick);
  await connector.detach('work', stick);
  const after = await connector.execute<{ 'node-name'?: string }[]>('work', 'query-named-block-nodes', { flat: true });
  expect(after.map((n) => n['node-name'])).not.toContain('dg-xvdi');
});

it('attaches a usb-redir device on a chardev to the export socket, and detach removes both', async () => {
  const socket = path.join(dir, 'redir.sock');
  const server = net.createServer();
  const connected = new Promise<net.Socket>((resolve) => {
    server.on('connection', (client) => {
      client.on('error', () => undefined);
      resolve(client);
    });
    server.listen(socket);
  });
  await connector.attach(
    'work',
    keyboard,
    { kind: 'usb-redir', params: { socket, vendorid: 0x0627, productid: 0x0001 }, options: {} },
    '0627:0001::u030101',
  );
  const client = await connected;
  const chardevs = await connector.execute<{ label: string }[]>('work', 'query-chardev');
  const attached = (await connector.attachments()).find((a) => a.port.portId === '1-2')!;
  expect(attached).toMatchObject({ port: keyboard, deviceId: '0627:0001::u030101' });
  const qdevId = chardevs.map((c) => c.label).find((label) => decodeQdevId(label)?.p === '1-2');
  expect(qdevId).toBeDefined();
  const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
  await connector.detach('work', keyboard);
  await closed;
  const left = await connector.execute<{ label: string }[]>('work', 'query-chardev');
  expect(left.map((c) => c.label)).not.toContain(qdevId);
  server.close();
});

async function waitForSocket(file: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(file);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${file} did not start listening`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
