import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runCaptured } from './test-io';

jest.setTimeout(30_000);

let dir: string;
let domains: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'devgate-lab-'));
  domains = path.join(dir, 'domains.json');
});
afterAll(async () => {
  await runCaptured('devgate', ['lab', 'down', '--domains', domains]);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('devgate lab', () => {
  it('starts, lists and stops lab VMs that every command can then use', async () => {
    const up = await runCaptured('devgate', ['lab', 'up', 'personal', 'work', '--domains', domains]);
    expect(up.err).toBe('');
    expect(up.code).toBe(0);
    expect(up.out).toMatch(/^personal +pid \d+ +\S+personal\S*$/m);

    const listed = await runCaptured('devgate', ['lab', 'list', '--domains', domains]);
    expect(listed.out).toMatch(/^personal +running +\d+/m);
    expect(listed.out).toMatch(/^work +running +\d+/m);

    // Registered domains are known to the device commands.
    const known = await runCaptured('qvm-block', ['list', 'work', '--domains', domains]);
    expect(known.code).toBe(0);

    const again = await runCaptured('devgate', ['lab', 'up', 'work', '--domains', domains]);
    expect(again.code).toBe(1);
    expect(again.err).toContain('work');

    expect((await runCaptured('devgate', ['lab', 'down', 'work', '--domains', domains])).code).toBe(0);
    const after = await runCaptured('devgate', ['lab', 'list', '--domains', domains]);
    expect(after.out).not.toMatch(/^work /m);
    expect(after.out).toMatch(/^personal /m);
  });
});
