/**
 * The audit log is kept for `audit.keepDays` (365 by default): older entries are pruned when
 * devgated starts and about once a day while it runs (services/audit-retention.spec.ts), and an
 * entry says how many went.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadConfig, openStateStore } from '@devgate/service';
import {
  ApiClient,
  cleanupHarness,
  harnessConfig,
  makeTempDir,
  startInProcess,
  writeConfigFile,
} from './testing/daemon-harness.js';

afterAll(() => cleanupHarness());

const DAY = 86_400_000;

interface AuditRow {
  readonly actor: string;
  readonly action: string;
  readonly reason?: string;
  readonly details?: Record<string, unknown>;
}

it('prunes what is older than audit.keepDays when it starts, keeps the rest, and audits how many went', async () => {
  const dir = makeTempDir('devgated-retention-');
  const file = writeConfigFile(harnessConfig(dir), path.join(dir, 'devgated.json'));
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), audit: { keepDays: 30 } }));
  const config = loadConfig(file);
  const seed = openStateStore(config.stateDir);
  const now = Date.now();
  // The newest one now: days are counted from it when the clock is past it (services/audit-retention.spec.ts).
  for (const days of [400, 31, 29, 0])
    seed.audit.append({
      actor: 'devgated',
      action: 'attach',
      outcome: 'ok',
      reason: `${days} days ago`,
      at: new Date(now - days * DAY),
    });
  seed.dispose();

  await startInProcess(config);
  const entries = (await new ApiClient(config.socket).get<{ entries: AuditRow[] }>('/v1/audit?limit=1000')).body
    .entries;
  expect(entries.map((e) => e.reason)).toEqual([
    '29 days ago',
    '0 days ago',
    '2 audit entries older than 30 days pruned',
  ]);
  expect(entries[2]).toMatchObject({ actor: 'devgated', action: 'audit-prune', details: { pruned: 2, keepDays: 30 } });
});
