import { DBusConnection, DBusError, parseSignature, plain, signatureText, variant } from './dbus';
import { Desktop, cleanUp } from './testing/desktop';

jest.setTimeout(30_000);

describe('signatures and received values', () => {
  it('parses signatures into complete types', () => {
    expect(parseSignature('u(ia{sv}av)s').map(signatureText)).toEqual(['u', '(ia{sv}av)', 's']);
    expect(() => parseSignature('(ii')).toThrow(/unbalanced/);
  });
});

describe('DBusConnection on a real session bus', () => {
  let desktop: Desktop | undefined;
  let server: DBusConnection | undefined;
  let client: DBusConnection | undefined;

  beforeAll(async () => {
    desktop = await Desktop.start({ xvfb: false });
    server = await DBusConnection.connect(desktop.busAddress);
    client = await DBusConnection.connect(desktop.busAddress);
    server.export('/test', {
      name: 'org.devgate.Test',
      methods: {
        Echo: { in: 'sv', out: 'sv', handler: ([s, v]) => [s, variant('s', String(plain('v', v)))] },
        Fail: {
          in: '',
          out: '',
          handler: () => {
            throw new Error('as asked');
          },
        },
      },
      properties: { Answer: { signature: 'u', get: () => 42 } },
      signals: { Happened: 's' },
    });
    await server.requestName('org.devgate.Test');
  });

  afterAll(() =>
    cleanUp(
      () => client?.dispose(),
      () => server?.dispose(),
      () => desktop?.stop(),
    ),
  );

  const call = (member: string, signature?: string, body?: unknown[], iface = 'org.devgate.Test') =>
    client!.call({ destination: 'org.devgate.Test', path: '/test', interface: iface, member, signature, body });

  it('serves methods, properties, signals and introspection', async () => {
    expect((await call('Echo', 'sv', ['a', variant('u', 7)])).body).toEqual(['a', [[{ type: 's', child: [] }], ['7']]]);
    const all = await call('GetAll', 's', ['org.devgate.Test'], 'org.freedesktop.DBus.Properties');
    expect(plain('a{sv}', all.body[0])).toEqual({ Answer: 42 });
    const xml = (await call('Introspect', undefined, undefined, 'org.freedesktop.DBus.Introspectable')).body[0];
    expect(xml).toContain('<method name="Echo">');
    const received: unknown[] = [];
    const subscription = await client!.onSignal({ interface: 'org.devgate.Test', member: 'Happened' }, (body) =>
      received.push(body[0]),
    );
    server!.emitSignal('/test', 'org.devgate.Test', 'Happened', 's', ['it']);
    await new Promise((r) => setTimeout(r, 100));
    expect(received).toEqual(['it']);
    subscription.dispose();
  });

  it('answers malformed or unknown calls with D-Bus errors and keeps serving', async () => {
    await expect(call('Echo', 's', ['only one'])).rejects.toMatchObject({
      dbusName: 'org.freedesktop.DBus.Error.InvalidArgs',
    });
    await expect(call('Nope')).rejects.toMatchObject({ dbusName: 'org.freedesktop.DBus.Error.UnknownMethod' });
    await expect(call('Fail')).rejects.toThrow(/as asked/);
    await expect(call('Get', 'ss', ['org.devgate.Test', 'Missing'], 'org.freedesktop.DBus.Properties')).rejects.toThrow(
      DBusError,
    );
    await expect(
      call('Set', 'ssv', ['org.devgate.Test', 'Answer', variant('u', 1)], 'org.freedesktop.DBus.Properties'),
    ).rejects.toMatchObject({
      dbusName: 'org.freedesktop.DBus.Error.PropertyReadOnly',
    });
    expect((await call('Echo', 'sv', ['still', variant('s', 'here')])).body[0]).toBe('still');
  });
});
