import { type DeviceJson } from '@devgate/core';
import { HOSTILE_STRINGS, UNSAFE_CHARACTERS, allStrings } from '@devgate/testkit';
import { type AskJson } from './daemon-api';
import {
  askNotification,
  bodyText,
  cleanSummary,
  deviceAddedNotification,
  deviceRemovedNotification,
  escapeMarkup,
  failureNotification,
  iconFor,
} from './notification-text';
import { buildMenu } from './menu-model';

const markup = { markup: true, actions: true };

function device(overrides: Partial<DeviceJson> = {}): DeviceJson {
  return {
    port: 'dom0:sdb1',
    class: 'block',
    backend: 'dom0',
    portId: 'sdb1',
    deviceId: '0781:5567:4C530001:u080650:1',
    description: 'USB_Storage: SanDisk Cruzer (STICK)',
    vendor: 'SanDisk',
    product: 'Cruzer',
    manufacturer: null,
    name: 'Cruzer (STICK)',
    serial: null,
    interfaces: ['u080650'],
    parent: 'dom0:2-1',
    attachment: null,
    hidden: null,
    legacyDescription: null,
    data: { size: 4 * 1024 ** 3, removable: true },
    ...overrides,
  };
}

const ask: AskJson = {
  id: '6c1b2f5e',
  devclass: 'block',
  device: 'dom0:sdb1',
  deviceId: '0781:5567:4C530001:u080650:1',
  description: 'USB_Storage: SanDisk Cruzer (STICK)',
  candidates: ['work'],
  reason: 'assigned to work (ask-to-attach)',
  createdAt: '2026-11-27T10:00:00.000Z',
  expiresAt: '2026-11-27T10:01:00.000Z',
  rememberable: true,
};

/** No entity other than the three the escape makes, no tag at all. */
const LIVE_MARKUP = /<|>|&(?!(amp|lt|gt);)/;

describe('notification text', () => {
  it('announces a device with its description, size, port and backend, and Attach / Ignore actions', () => {
    const spec = deviceAddedNotification(device(), ['work', 'personal'], markup);
    expect(spec).toEqual({
      summary: 'Device available',
      body: 'USB_Storage: SanDisk Cruzer (STICK) (4.0 GiB) is available.\nPort dom0:sdb1 on dom0',
      icon: 'drive-removable-media',
      category: 'device.added',
      urgency: 1,
      actions: [
        { key: 'attach:work', label: 'Attach to work' },
        { key: 'attach:personal', label: 'Attach to personal' },
        { key: 'ignore', label: 'Ignore' },
      ],
      expireMs: -1,
    });
    expect(deviceAddedNotification(device(), ['work'], { markup: true, actions: false }).actions).toEqual([]);
    expect(deviceAddedNotification(device(), [], markup).body).toContain('No VM to attach it to');
  });

  it('picks an icon by category', () => {
    expect(iconFor(device({ interfaces: ['u030101'] }))).toBe('input-keyboard');
    expect(iconFor(device({ interfaces: ['u030102'] }))).toBe('input-mouse');
    expect(iconFor(device({ interfaces: ['u0e0100'] }))).toBe('camera-web');
    expect(iconFor(device({ interfaces: ['u080650'] }))).toBe('drive-removable-media');
    expect(iconFor(device({ interfaces: ['b******'], data: { removable: false } }))).toBe('drive-harddisk');
    expect(iconFor(device({ interfaces: ['b******'], data: { removable: true } }))).toBe('drive-removable-media');
  });

  it('reports removal, failures (critical, with the coded error) and asks', () => {
    expect(deviceRemovedNotification(device(), markup)).toMatchObject({
      summary: 'Device removed',
      category: 'device.removed',
      transient: true,
    });
    const failed = failureNotification(
      {
        verb: 'Attaching',
        device: 'Cruzer',
        vm: 'work',
        code: 'DG_DOMAIN_NOT_RUNNING',
        message: "domain 'work' is not running",
        hint: 'start it first',
      },
      'drive-removable-media',
      markup,
    );
    expect(failed).toMatchObject({ summary: 'Attaching device failed', category: 'device.error', urgency: 2 });
    expect(failed.body).toBe(
      "Attaching Cruzer to work failed.\nError: DG_DOMAIN_NOT_RUNNING - domain 'work' is not running\nHint: start it first",
    );

    const now = Date.parse('2026-11-27T10:00:30.000Z');
    const single = askNotification(ask, device(), markup, now);
    expect(single.summary).toBe('Attach device to work?');
    expect(single.actions.map((a) => a.label)).toEqual(['Allow', 'Deny', 'Always allow', 'Always deny']);
    expect(single).toMatchObject({ category: 'device', urgency: 2, expireMs: 30_000 });
    expect(single.body).toContain('Denied automatically in 30 s.');
    const several = askNotification(
      { ...ask, candidates: ['work', 'personal'], rememberable: false },
      undefined,
      markup,
    );
    expect(several.summary).toBe('Attach device?');
    expect(several.actions.map((a) => a.key)).toEqual(['allow:work', 'allow:personal', 'deny']);
  });

  it('escapes body markup (& < >) so that <b> shows literally', () => {
    expect(escapeMarkup('<b>bold</b> & <a href="x">')).toBe('&lt;b&gt;bold&lt;/b&gt; &amp; &lt;a href="x"&gt;');
    expect(bodyText(['<b>x</b> &amp;'], { markup: true })).toBe('&lt;b&gt;x&lt;/b&gt; &amp;amp;');
    // A server without body-markup shows text as it is: escaping would show the entities.
    expect(bodyText(['<b>x</b>'], { markup: false })).toBe('<b>x</b>');
    expect(cleanSummary('Attach <b>now</b> & \u001b[31mhere')).toBe('Attach bnow/b here');
  });

  it('leaves no invisible format character in a body: bidi marks, soft hyphens, tag characters', () => {
    for (const hidden of ['\u061c', '\u00ad', '\u180e', '\u{e0041}', '\u{e007f}']) {
      const spec = deviceAddedNotification(device({ description: `USB_Storage: Cru${hidden}zer` }), ['work'], markup);
      expect([hidden, spec.body.split('\n')[0]]).toEqual([hidden, 'USB_Storage: Cru zer (4.0 GiB) is available.']);
    }
  });

  it.each(HOSTILE_STRINGS.map((s, i) => [i, s] as const))(
    'keeps hostile device string #%i inert in every notification and menu label',
    (_i, hostile) => {
      const evil = device({
        port: `dom0:sdb${hostile}`,
        portId: `sdb${hostile}`,
        description: `USB_Storage: ${hostile}`,
        name: hostile,
        vendor: hostile,
        backend: `dom0${hostile}`,
        deviceId: hostile,
        data: { size: 1024, label: hostile },
      });
      const vm = `work${hostile}`;
      const specs = [
        deviceAddedNotification(evil, [vm], markup),
        deviceRemovedNotification(evil, markup),
        failureNotification(
          { verb: 'Detaching', device: hostile, vm, code: hostile, message: hostile, hint: hostile },
          'x',
          markup,
        ),
        askNotification(
          { ...ask, device: hostile, description: hostile, reason: hostile, candidates: [vm, hostile] },
          evil,
          markup,
        ),
      ];
      for (const spec of specs) {
        for (const [where, text] of allStrings(spec)) {
          // The body's lines are joined by newlines, which the spec allows; nothing else is a control.
          for (const line of where === '$.body' ? text.split('\n') : [text]) {
            expect([where, UNSAFE_CHARACTERS.test(line)]).toEqual([where, false]);
          }
        }
        expect(spec.body).not.toMatch(LIVE_MARKUP);
        expect(spec.summary).not.toMatch(/[<>&]/);
        for (const action of spec.actions) expect(action.label).not.toMatch(/[<>&]/);
        for (const line of spec.body.split('\n')) expect(line.length).toBeLessThan(1000);
      }
      if (hostile.includes('<b>')) expect(specs[0].body).toContain('&lt;b&gt;');

      const menu = buildMenu({
        devices: [evil],
        view: { domains: [vm], assignments: [], backends: [] },
        connected: true,
        isNew: () => true,
      });
      for (const [where, text] of allStrings(menu.map(({ key: _key, ...item }) => item))) {
        if (where.includes('.action') || where.endsWith('.key')) continue; // never shown
        expect([where, UNSAFE_CHARACTERS.test(text)]).toEqual([where, false]);
      }
    },
  );
});
