/**
 * Environment variables a spec sets and must give back: their values now, and a `restore()` that
 * puts each back (deleting those that were unset) for afterEach or afterAll.
 */
export function savedEnv(...names: readonly string[]): { restore(): void } {
  const values = new Map(names.map((name) => [name, process.env[name]]));
  return {
    restore() {
      for (const [name, value] of values) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    },
  };
}
