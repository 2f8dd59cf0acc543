import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pciIdsNames } from './pci-ids';

const SAMPLE = [
  '# pci.ids, a few lines of the real file',
  '#',
  '10de  NVIDIA Corporation',
  '\t1c2d  GP106M',
  '8086  Intel Corporation',
  '\t1c2d  6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2',
  '\t\t17aa 21ce  ThinkPad T520',
  '\t1c2d  a repeated id (ignored: the first wins)',
  'zzzz  not a vendor line',
  '\tgarbage',
  '',
  '# List of known device classes, subclasses and programming interfaces',
  'C 0c  Serial bus controller',
  '\t03  USB controller',
  '\t\t20  EHCI',
  '\t\t30  XHCI',
  'C 06  Bridge',
  '\t04  PCI bridge',
  '',
].join('\n');

describe('pci.ids reader', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pci-ids-'));
    fs.writeFileSync(path.join(dir, 'pci.ids'), SAMPLE);
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('finds vendors, their devices (per vendor: the same id means another device elsewhere) and classes', () => {
    const names = pciIdsNames(path.join(dir, 'pci.ids'));
    expect(names.vendor('8086')).toBe('Intel Corporation');
    expect(names.device('8086', '1C2D')).toBe('6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2');
    expect(names.device('10de', '1c2d')).toBe('GP106M');
    expect(names.vendor('zzzz')).toBeUndefined();
    expect(names.className(0x0c0320)).toBe('EHCI');
    expect(names.className(0x0c0399)).toBe('USB controller'); // unknown programming interface: the subclass
    expect(names.className(0x0c9900)).toBe('Serial bus controller');
    expect(names.subclassName(0x0c0330)).toBe('USB controller');
    expect(names.className(0x060400)).toBe('PCI bridge');
    expect(names.className(0xff0000)).toBeUndefined();
  });

  it('gives nothing when no file can be read, and ignores a file that is far too big', () => {
    const none = pciIdsNames([path.join(dir, 'missing'), dir]);
    expect(none.vendor('8086')).toBeUndefined();
    expect(none.className(0x0c0330)).toBeUndefined();
    const big = path.join(dir, 'big.ids');
    fs.writeFileSync(big, '');
    fs.truncateSync(big, 17 * 1024 * 1024);
    expect(pciIdsNames(big).vendor('8086')).toBeUndefined();
  });
});
