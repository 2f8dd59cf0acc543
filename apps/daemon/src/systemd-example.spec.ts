import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadConfig } from '@devgate/service';

// The configuration the systemd unit ships with (see @devgate/service's config.spec.ts for the defaults).
const EXAMPLE = path.join(__dirname, '..', 'systemd', 'devgated.example.json');

it('the example configuration matches the defaults: the read group reads, only root writes', () => {
  const config = loadConfig(EXAMPLE);
  expect(config.access).toEqual({ readGroup: 'devgate', users: [], groups: [] });
  expect(JSON.parse(fs.readFileSync(EXAMPLE, 'utf8')).access.groups).toEqual([]);
});
