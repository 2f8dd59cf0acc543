import { categoryOf, deviceCategory, interfaceCode, interfaceMatches, isInterfaceCode } from './interfaces';

describe('interface codes', () => {
  it('builds and validates 7-character codes', () => {
    expect(interfaceCode('u', 3, 1, 1)).toBe('u030101');
    expect(interfaceCode('u', 8, 6, 0x50)).toBe('u080650');
    expect(isInterfaceCode('p0c0330')).toBe(true);
    expect(isInterfaceCode('u0301')).toBe(false);
    expect(isInterfaceCode('x030101')).toBe(false);
  });

  it('matches with * wildcards in the pattern only', () => {
    expect(interfaceMatches('u03****', 'u030101')).toBe(true);
    expect(interfaceMatches('u03**02', 'u030101')).toBe(false);
    expect(interfaceMatches('u030101', 'u03****')).toBe(false);
  });

  it.each([
    ['u030101', 'Keyboard'],
    ['u030102', 'Mouse'],
    ['u030000', 'Input'],
    ['u080650', 'USB_Storage'],
    ['b******', 'Block_Storage'],
    ['p0c0330', 'PCI_USB'],
    ['p0c0500', 'PCI_Serial_Bus'],
    ['p028000', 'Network'],
    ['ue00101', 'Bluetooth'],
    ['uff0000', 'Other'],
    ['?******', 'Other'],
    // devgate's input devices: `i` + class + bus + 00
    ['i010300', 'Keyboard'],
    ['i021100', 'Mouse'],
    ['i041800', 'Input'],
  ])('%s is %s', (code, category) => {
    expect(categoryOf(code)).toBe(category);
  });

  it('takes the first interface that is not Other', () => {
    expect(deviceCategory(['uff0000', 'u080650', 'u030101'])).toBe('USB_Storage');
    expect(deviceCategory([])).toBe('Other');
  });
});
