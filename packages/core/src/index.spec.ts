// Outside devgate's workspace nothing loads the reflect polyfill first (devgated and devgate's jest
// preset do): requiring @devgate/core must work on its own.
describe('@devgate/core, required first', () => {
  it('loads without a reflect polyfill already in place', () => {
    const reflect = Reflect as unknown as Record<string, unknown>;
    const polyfilled = Object.fromEntries(
      Object.getOwnPropertyNames(Reflect)
        .filter((name) => name.endsWith('Metadata') || name === 'metadata')
        .map((name) => [name, reflect[name]]),
    );
    expect(Object.keys(polyfilled)).toContain('getMetadata');
    for (const name of Object.keys(polyfilled)) delete reflect[name];
    try {
      // A fresh module registry: tsyringe and reflect-metadata are evaluated again, as in a new process.
      jest.isolateModules(() => {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        expect(() => require('./index')).not.toThrow();
      });
    } finally {
      Object.assign(reflect, polyfilled);
    }
  });
});
