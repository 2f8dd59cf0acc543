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
        Never: { in: '', out: '', handler: () => new Promise<unknown[]>(() => undefined) },
        Slow: { in: '', out: 's', handler: () => new Promise<unknown[]>((r) => setTimeout(() => r(['late']), 300)) },
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

  it('gets a unique name, times out a call and ignores its late answer', async () => {
    expect(client!.uniqueName).toMatch(/^:\d+\.\d+$/);
    expect(client!.uniqueName).not.toBe(server!.uniqueName);
    const started = Date.now();
    await expect(
      client!.call({
        destination: 'org.devgate.Test',
        path: '/test',
        interface: 'org.devgate.Test',
        member: 'Slow',
        timeoutMs: 100,
      }),
    ).rejects.toMatchObject({ dbusName: 'org.freedesktop.DBus.Error.NoReply' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(90);
    await new Promise((r) => setTimeout(r, 400)); // the answer arrives, and finds nobody waiting
    expect((await call('Echo', 'sv', ['after', variant('s', 'timeout')])).body[0]).toBe('after');
  });

  it('fails waiting calls when disposed, and every call after', async () => {
    const own = await DBusConnection.connect(desktop!.busAddress);
    const closes: unknown[] = [];
    own.onClose((error) => closes.push(error));
    const waiting = own.call({
      destination: 'org.devgate.Test',
      path: '/test',
      interface: 'org.devgate.Test',
      member: 'Never',
    });
    own.dispose();
    await expect(waiting).rejects.toMatchObject({ dbusName: 'org.freedesktop.DBus.Error.Disconnected' });
    expect(own.isClosed).toBe(true);
    await expect(own.callBus('GetId')).rejects.toMatchObject({ dbusName: 'org.freedesktop.DBus.Error.Disconnected' });
    expect(closes).toEqual([]); // disposing is not the bus going away
  });
});

describe('DBusConnection when the bus is not there or goes away', () => {
  it('refuses an address nobody listens on with the socket error', async () => {
    await expect(DBusConnection.connect('unix:path=/nonexistent/devgate-test-bus')).rejects.toThrow(/ENOENT/);
  });

  it('reports the bus going away once and fails what was waiting', async () => {
    const desktop = await Desktop.start({ xvfb: false });
    try {
      const bus = await DBusConnection.connect(desktop.busAddress);
      const closes: (Error | undefined)[] = [];
      const closed = new Promise<Error | undefined>((resolve) =>
        bus.onClose((error) => {
          closes.push(error);
          resolve(error);
        }),
      );
      await bus.requestName('org.devgate.Waiting');
      const waiting = bus
        .call({
          destination: 'org.devgate.Waiting',
          path: '/',
          interface: 'org.devgate.Nobody',
          member: 'Hang',
        })
        .then(
          () => 'answered',
          (error: unknown) => error,
        );
      await desktop.stop();
      expect(await closed).toMatchObject({ message: expect.any(String) });
      expect(bus.isClosed).toBe(true);
      expect(await waiting).toMatchObject({ dbusName: 'org.freedesktop.DBus.Error.Disconnected' });
      await new Promise((r) => setTimeout(r, 100));
      expect(closes).toHaveLength(1);
    } finally {
      await desktop.stop();
    }
  });
});
