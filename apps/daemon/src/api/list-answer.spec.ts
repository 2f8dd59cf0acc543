import { type DeviceInfo, deviceJsonBytes, deviceListBytes, deviceToJson } from '@devgate/core';
import { ListAnswer } from './list-answer';

const usb = (n: number, extra: Partial<DeviceInfo> = {}): DeviceInfo => ({
  port: { devclass: 'usb', backend: 'dom0', portId: `1-${n}` },
  deviceId: `0461:0010:SN${n}:u030101`,
  vendor: 'Primax' as DeviceInfo['vendor'],
  product: 'Kéyboard “quoted” \u2028' as DeviceInfo['product'],
  interfaces: ['u030101'],
  data: { busnum: 1, devnum: n },
  ...extra,
});

const text = (answer: { parts: readonly Buffer[]; length: number }) => {
  const body = Buffer.concat(answer.parts);
  expect(body.length).toBe(answer.length);
  return body.toString('utf8');
};
const expected = (devices: readonly DeviceInfo[]) => JSON.stringify({ devices: devices.map(deviceToJson) });

describe('the list answer, kept as chunks of serialized devices', () => {
  it('is byte for byte what serializing every device writes, empty or not', () => {
    const devices = Array.from({ length: 700 }, (_, i) => usb(i));
    const answer = new ListAnswer();
    expect(text(answer.answer(() => []))).toBe('{"devices":[]}');
    answer.invalidate();
    expect(text(answer.answer(() => devices))).toBe(expected(devices));
    expect(deviceListBytes(devices).toString()).toBe(expected(devices));
    expect(deviceListBytes(devices, { cached: false }).toString()).toBe(expected(devices));
  });

  it('after a device event, makes again only the chunks whose devices changed, came or went', () => {
    let devices = Array.from({ length: 700 }, (_, i) => usb(i));
    const answer = new ListAnswer();
    const first = answer.answer(() => devices).parts;
    // Nothing changed: the same parts, not even the list asked again, and nothing made.
    const kept = answer.answer(() => []);
    expect(kept.parts).toBe(first);
    expect(kept.made).toBe(false);

    // One device in the second chunk changes (a new object): the first and third chunks stay.
    devices = devices.map((d, i) => (i === 300 ? usb(300, { data: { busnum: 2, devnum: 300 } }) : d));
    answer.invalidate();
    const second = answer.answer(() => devices);
    expect(second.made).toBe(true);
    expect(text(second)).toBe(expected(devices));
    expect(second.parts[1]).toBe(first[1]);
    expect(second.parts[2]).not.toBe(first[2]);
    expect(second.parts[3]).toBe(first[3]);

    // One goes: the chunks from it on shift, and are made again; one comes at the end.
    devices = [...devices.slice(0, 10), ...devices.slice(11), usb(9999)];
    answer.invalidate();
    const third = answer.answer(() => devices);
    expect(text(third)).toBe(expected(devices));
    expect(third.parts[1]).not.toBe(second.parts[1]);

    // Not reusing (DEVGATE_API_CACHE=device): the same bytes, every chunk made again.
    const fresh = answer.answer(() => devices, { reuse: false });
    expect(text(fresh)).toBe(expected(devices));
    expect(fresh.parts[1]).not.toBe(third.parts[1]);
  });

  it("keeps one copy of a device's JSON: its cached bytes become its place in the chunk", () => {
    const devices = Array.from({ length: 3 }, (_, i) => usb(i));
    const before = deviceJsonBytes(devices[1]);
    const { parts } = new ListAnswer().answer(() => devices);
    const kept = deviceJsonBytes(devices[1]);
    expect(kept.equals(before)).toBe(true);
    expect(kept.buffer).toBe(parts[1].buffer);
  });
});
