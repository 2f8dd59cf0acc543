import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { usbIdsNames } from './usb-ids';

// The layout of the real file, trimmed: vendors, their products and interfaces, then the class and
// HID sections whose indented lines must not be taken for products.
const SAMPLE = [
  '#',
  '#\tList of USB IDs',
  '# Syntax: vendor  vendor_name / <tab>device  device_name',
  '',
  '0461  Primax Electronics, Ltd',
  '\t0010  HP PR1101U / Primax PMX-KPR1101U Keyboard',
  '\t4d15  Dell Optical Mouse',
  '# a comment inside a vendor block',
  '\t4d81  Dell N889 Optical Mouse',
  '05F3  PI Engineering, Inc.',
  '\t0007  Kinesis Advantage PRO MPC/USB Keyboard',
  '\t\t00  an interface line, ignored',
  '0461  a second definition of 0461',
  '\t0010  shadowed',
  '',
  '# List of known device classes, subclasses and protocols',
  'C 03  Human Interface Device',
  '\t01  Boot Interface Subclass',
  'HID 00  Undefined',
  'L 0000  Not applicable',
  '',
].join('\n');

let dir: string;
beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-usbids-'))));
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

function write(name: string, content: string | Buffer): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

describe('usbIdsNames', () => {
  it('finds vendors and their products, case-insensitively, first definition winning', () => {
    const names = usbIdsNames(write('usb.ids', SAMPLE));
    expect(names.vendor('0461')).toBe('Primax Electronics, Ltd');
    expect(names.product('0461', '0010')).toBe('HP PR1101U / Primax PMX-KPR1101U Keyboard');
    expect(names.product('0461', '4d81')).toBe('Dell N889 Optical Mouse');
    expect(names.vendor('05f3')).toBe('PI Engineering, Inc.');
    expect(names.product('05F3', '0007')).toBe('Kinesis Advantage PRO MPC/USB Keyboard');
    expect(names.product('05f3', '0000')).toBeUndefined();
    expect(names.vendor('ffff')).toBeUndefined();
    expect(names.product('ffff', '0001')).toBeUndefined();
  });

  it('does not take the class section for a vendor or its lines for products', () => {
    const names = usbIdsNames(write('usb.ids', SAMPLE));
    expect(names.product('05f3', '01')).toBeUndefined();
    expect(names.vendor('0000')).toBeUndefined();
    expect(names.product('0461', '0001')).toBeUndefined();
  });

  it('reads nothing until the first lookup, then uses the first file that exists', () => {
    const missing = path.join(dir, 'hwdata', 'usb.ids');
    const fallback = path.join(dir, 'misc-usb.ids');
    const names = usbIdsNames([missing, fallback]);
    fs.writeFileSync(fallback, SAMPLE); // written after the reader was made
    expect(names.vendor('0461')).toBe('Primax Electronics, Ltd');
    fs.rmSync(fallback);
    expect(names.product('0461', '0010')).toBe('HP PR1101U / Primax PMX-KPR1101U Keyboard'); // kept in memory
  });

  it('answers nothing, without throwing, when there is no database', () => {
    const names = usbIdsNames([path.join(dir, 'none'), dir]);
    expect(names.vendor('0461')).toBeUndefined();
    expect(names.product('0461', '0010')).toBeUndefined();
  });

  it('survives hostile content: binary bytes, CRLF, endless lines, and a file far too large', () => {
    const junk = Buffer.concat([
      Buffer.from([0xff, 0xfe, 0x00, 0x1b, 0x0a, 0x09, 0x09, 0x0a]),
      Buffer.from(`abcd  ${'x'.repeat(200_000)}\r\n\t0001  \u001b[31mred\r\n\t\t\t\n\t\n1234\n  \n1234  \n`),
    ]);
    const names = usbIdsNames(write('junk.ids', junk));
    expect(names.vendor('abcd')).toHaveLength(200_000); // bounded later, by sanitizeText
    expect(names.product('abcd', '0001')).toBe('\u001b[31mred'); // sanitized by the parser that uses it
    expect(names.vendor('1234')).toBe('');
    const huge = write('huge.ids', Buffer.alloc(9 * 1024 * 1024, 'a'));
    expect(usbIdsNames(huge).vendor('aaaa')).toBeUndefined();
  });
});
