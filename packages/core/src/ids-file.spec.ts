import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { type IdsFile, idsFile, idsText } from './ids-file';

// The layout of pci.ids, trimmed: vendors, devices, subsystems, comments inside blocks, then classes.
const PCI_SAMPLE = [
  '# pci.ids, a few lines of the real file',
  '#',
  '10de  NVIDIA Corporation',
  '\t1c2d  GP106M',
  '8086  Intel Corporation',
  '\t1c2d  6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2',
  '\t\t1028 04a3  Precision M4600',
  '# a comment inside the block',
  '',
  '\t\t17AA 21CE  ThinkPad T520',
  '\t1c26  6 Series/C200 Series Chipset Family USB Enhanced Host Controller #1',
  '\t\t17aa 21ce  ThinkPad T520 (the other controller)',
  '\t1c2d  a repeated id (ignored: the first wins)',
  '\t\t1028 04aa  under the repeated id (ignored)',
  '8086  a repeated vendor (ignored)',
  '\tffff  under the repeated vendor (ignored)',
  'zzzz  not a vendor line: ends the block above',
  '\t0001  belongs to no vendor',
  '',
  '# List of known device classes, subclasses and programming interfaces',
  'C 0c  Serial bus controller',
  '\t00  FireWire (IEEE 1394)',
  '\t\t10  OHCI',
  '\t03  USB controller',
  '\t\t20  EHCI',
  '\t\t30  XHCI',
  'C 06  Bridge',
  '\t04  PCI bridge',
  '',
].join('\n');

/** A straightforward full parse of vendors and devices (the old readers' way), to compare with. */
function referenceNames(text: string): { vendors: Map<string, string>; devices: Map<string, string> } {
  const vendors = new Map<string, string>();
  const devices = new Map<string, string>();
  let vendor: string | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    if (line === '' || line.startsWith('#')) continue;
    let m: RegExpExecArray | null;
    if (!line.startsWith('\t')) {
      vendor = undefined;
      if ((m = /^([0-9a-fA-F]{4}) {2}(.*)$/.exec(line)) && !vendors.has(m[1].toLowerCase())) {
        vendor = m[1].toLowerCase();
        vendors.set(vendor, m[2]);
      }
    } else if (vendor !== undefined && (m = /^\t([0-9a-fA-F]{4}) {2}(.*)$/.exec(line))) {
      const key = `${vendor}:${m[1].toLowerCase()}`;
      if (!devices.has(key)) devices.set(key, m[2]);
    }
  }
  return { vendors, devices };
}

/**
 * What `names` answers differently from the full parse, for every 7th vendor and every 29th device
 * of `text` (each lookup of a vendor not seen before searches the file: all of them take seconds).
 */
function differences(names: IdsFile, text: string): string[] {
  const { vendors, devices } = referenceNames(text);
  const found: string[] = [];
  const every = <T>(n: number, entries: Iterable<T>) => [...entries].filter((_, i) => i % n === 0);
  for (const [id, name] of every(7, vendors)) if (names.vendor(id) !== name) found.push(`${id}: ${names.vendor(id)}`);
  for (const [key, name] of every(29, devices)) {
    const [vendor, device] = key.split(':');
    if (names.device(vendor, device) !== name) found.push(`${key}: ${names.device(vendor, device)}`);
  }
  return found;
}

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-ids-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function write(name: string, content: string | Buffer): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

describe('ID files (pci.ids, usb.ids)', () => {
  function expectSample(names: IdsFile): void {
    expect(names.vendor('8086')).toBe('Intel Corporation');
    expect(names.vendor('10DE')).toBe('NVIDIA Corporation');
    expect(names.device('8086', '1C2D')).toBe('6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2');
    expect(names.device('10de', '1c2d')).toBe('GP106M'); // the same device id means another device elsewhere
    expect(names.device('8086', '1c26')).toBe('6 Series/C200 Series Chipset Family USB Enhanced Host Controller #1');
    expect(names.device('8086', 'ffff')).toBeUndefined(); // under the repeated vendor
    expect(names.device('8086', '0001')).toBeUndefined(); // after the block ended
    expect(names.subsystem('8086', '1c2d', '1028', '04a3')).toBe('Precision M4600');
    expect(names.subsystem('8086', '1c2d', '17aa', '21ce')).toBe('ThinkPad T520'); // past a comment and a blank line
    expect(names.subsystem('8086', '1c26', '17aa', '21ce')).toBe('ThinkPad T520 (the other controller)');
    expect(names.subsystem('8086', '1c2d', '1028', '04aa')).toBeUndefined(); // under the repeated device
    expect(names.subsystem('8086', '1c26', '1028', '04a3')).toBeUndefined(); // another device's
    expect(names.className('0c')).toBe('Serial bus controller');
    expect(names.subclassName('0C', '03')).toBe('USB controller');
    expect(names.progIfName('0c', '03', '30')).toBe('XHCI');
    expect(names.progIfName('0c', '00', '10')).toBe('OHCI');
    expect(names.progIfName('0c', '03', '10')).toBeUndefined(); // OHCI is FireWire's, not USB's
    expect(names.subclassName('06', '04')).toBe('PCI bridge');
    expect(names.subclassName('06', '03')).toBeUndefined();
    expect(names.className('ff')).toBeUndefined();
  }

  it('looks up vendors, devices, subsystems, classes, subclasses and programming interfaces in text', () => {
    expectSample(idsText(PCI_SAMPLE));
  });

  it('reads a file: the same answers, with CRLF line ends too', () => {
    expectSample(idsFile(write('pci.ids', PCI_SAMPLE)));
    expectSample(idsFile(write('crlf.ids', PCI_SAMPLE.replace(/\n/g, '\r\n'))));
  });

  it('answers nothing for what is not an id of the right length, without throwing', () => {
    const names = idsText(PCI_SAMPLE);
    for (const id of ['', '808', '80860', 'zzzz', '80.6', '(?:', '\n808']) {
      expect(names.vendor(id)).toBeUndefined();
      expect(names.device('8086', id)).toBeUndefined();
      expect(names.subsystem('8086', '1c2d', id, '04a3')).toBeUndefined();
    }
    expect(names.className('0c0')).toBeUndefined();
    expect(names.subclassName('0c', '3')).toBeUndefined();
    expect(names.progIfName('0c', '03', '.*')).toBeUndefined();
  });

  it('reads nothing until the first lookup, then keeps the first file that is there', () => {
    const missing = path.join(dir, 'hwdata', 'pci.ids');
    const fallback = path.join(dir, 'misc-pci.ids');
    const names = idsFile([missing, dir, fallback]); // a directory is skipped too
    fs.writeFileSync(fallback, PCI_SAMPLE); // written after the reader was made
    expect(names.vendor('8086')).toBe('Intel Corporation');
    fs.rmSync(fallback);
    expect(names.progIfName('0c', '03', '20')).toBe('EHCI'); // kept in memory
  });

  it('answers nothing, without throwing, when there is no file, or only one far too large', () => {
    const none = idsFile([path.join(dir, 'none'), dir]);
    expect(none.vendor('8086')).toBeUndefined();
    expect(none.device('8086', '1c2d')).toBeUndefined();
    expect(none.subsystem('8086', '1c2d', '1028', '04a3')).toBeUndefined();
    expect(none.className('0c')).toBeUndefined();
    const big = write('big.ids', PCI_SAMPLE);
    fs.truncateSync(big, 2 * 1024 * 1024);
    expect(idsFile(big).vendor('8086')).toBe('Intel Corporation');
    expect(idsFile(big, { maxBytes: 1024 * 1024 }).vendor('8086')).toBeUndefined();
  });

  it('does not hang on a FIFO where the file should be', () => {
    const fifo = path.join(dir, 'fifo.ids');
    try {
      execFileSync('mkfifo', [fifo]);
    } catch {
      return; // no mkfifo here
    }
    expect(idsFile([fifo, write('pci.ids', PCI_SAMPLE)]).vendor('8086')).toBe('Intel Corporation');
  });

  it('survives hostile content: binary bytes, broken UTF-8, line separators, endless lines', () => {
    const junk = Buffer.concat([
      Buffer.from([0xff, 0xfe, 0x00, 0x1b, 0x0a, 0x09, 0x09, 0x0a]),
      Buffer.from(`abcd  ${'x'.repeat(200_000)}\r\n\t0001  \u001b[31mred\r\n\t\t\t\n\t\n1234\n  \n1234  \n`),
      Buffer.from('beef  first\u2028line\nBEEF  Beef\n\t0bad  caf'),
      Buffer.from([0xc3, 0x0a]), // a UTF-8 sequence cut by the line end
      Buffer.from('\t0bad  second\nC 0c  Serial\r\r\nC 0C  Serial bus\n\t03  USB\u2029x\n\t03  USB\n\t\t30  XHCI'),
    ]);
    const names = idsFile(write('junk.ids', junk));
    expect(names.vendor('abcd')).toHaveLength(200_000); // bounded later, by sanitizeText
    expect(names.device('abcd', '0001')).toBe('\u001b[31mred'); // sanitized by the parser that uses it
    expect(names.vendor('1234')).toBe('');
    expect(names.vendor('beef')).toBe('Beef'); // a name with a line separator is not a line of the format
    expect(names.device('beef', '0bad')).toBe('caf\ufffd');
    expect(names.className('0c')).toBe('Serial bus'); // `\r\r` leaves a `\r` in the name: not a line
    expect(names.subclassName('0c', '03')).toBe('USB');
    expect(names.progIfName('0c', '03', '30')).toBe('XHCI'); // the last line, without a line end
  });

  it('finds classes from the first class line on, wherever it is, and none in a file without one', () => {
    expect(idsText('C 0c  First\n\t03  USB\n').subclassName('0c', '03')).toBe('USB');
    expect(idsText('8086  Intel\nC 0x  not a class\n1af4  Red Hat\nC 0c  Serial\n').className('0c')).toBe('Serial');
    expect(idsText('8086  Intel\n\tc0c0  Not a class\n').className('0c')).toBeUndefined();
  });

  it('survives lines of nothing but tabs, spaces and hex digits', () => {
    const text = [
      '\t'.repeat(50_000),
      ' '.repeat(50_000),
      '8'.repeat(50_000),
      '8086' + ' '.repeat(50_000),
      '\t\t\t\t',
    ].join('\n');
    const names = idsText(text);
    expect(names.vendor('8888')).toBeUndefined();
    expect(names.vendor('8086')).toBe(' '.repeat(49_998));
    expect(names.device('8086', '0000')).toBeUndefined();
    expect(names.subclassName('88', '88')).toBeUndefined();
  });

  it('finds where a long block ends, wherever the end falls in what is decoded at a time', () => {
    for (let pad = 65_520; pad < 65_545; pad++) {
      const devices = '\t1111  first\n' + `#${'x'.repeat(pad)}\n` + '\t2222  last\n';
      const names = idsText(`1234  long\n${devices}5678  next\n\t3333  not 1234's\n\t\t1234 5678  sub\n`);
      expect([pad, names.device('1234', '2222')]).toEqual([pad, 'last']);
      expect([pad, names.device('1234', '3333')]).toEqual([pad, undefined]);
      expect([pad, names.subsystem('5678', '3333', '1234', '5678')]).toEqual([pad, 'sub']);
    }
  });

  // The real databases, where installed (CI installs hwdata): the well-known names, and vendors and
  // devices throughout the file the same as a full parse finds.
  const real = (name: string) =>
    ['/usr/share/hwdata', '/usr/share/misc'].map((d) => path.join(d, name)).find((f) => fs.existsSync(f));
  const pciIds = real('pci.ids');
  const usbIds = real('usb.ids');

  (pciIds ? it : it.skip)('reads the system pci.ids', () => {
    const names = idsFile(pciIds!);
    expect(names.vendor('8086')).toBe('Intel Corporation');
    expect(names.device('8086', '1c2d')).toBe('6 Series/C200 Series Chipset Family USB Enhanced Host Controller #2');
    expect(names.subsystem('8086', '1c2d', '1028', '04a3')).toBe('Precision M4600');
    expect(names.className('0c')).toBe('Serial bus controller');
    expect(names.subclassName('0c', '03')).toBe('USB controller');
    expect(names.progIfName('0c', '03', '30')).toBe('XHCI');
    expect(names.vendor('0000')).toBeUndefined();
    expect(differences(names, fs.readFileSync(pciIds!, 'utf8'))).toEqual([]);
  });

  (usbIds ? it : it.skip)('reads the system usb.ids', () => {
    const names = idsFile(usbIds!);
    expect(names.vendor('1d6b')).toBe('Linux Foundation');
    expect(names.device('1d6b', '0002')).toBe('2.0 root hub');
    expect(names.className('03')).toBe('Human Interface Device');
    expect(names.progIfName('03', '01', '01')).toBe('Keyboard');
    expect(differences(names, fs.readFileSync(usbIds!, 'utf8'))).toEqual([]);
  });
});
