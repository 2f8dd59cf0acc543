import * as fs from 'node:fs';
import * as path from 'node:path';

// The systemd user unit must let the tray reach the system's devgated at /run/devgate: no option
// that hides /run or replaces the file system it sees.
const UNIT = path.join(__dirname, '..', 'devgate-tray.service');

/** `Key=value` lines of the unit's [Service] section, comments and continuations aside. */
function serviceSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) section = header[1];
    else if (section === 'Service' && line.includes('=')) {
      const key = line.slice(0, line.indexOf('='));
      settings.set(key, [...(settings.get(key) ?? []), line.slice(line.indexOf('=') + 1)]);
    }
  }
  return settings;
}

it('devgate-tray.service hides nothing under /run from the tray', () => {
  const settings = serviceSettings(fs.readFileSync(UNIT, 'utf8'));
  expect(settings.get('ExecStart')).toEqual(['devgate-tray']);
  for (const key of ['RootDirectory', 'RootImage']) {
    expect([key, settings.get(key)]).toEqual([key, undefined]);
  }
  // Paths that would be hidden, emptied or replaced.
  for (const key of ['InaccessiblePaths', 'TemporaryFileSystem', 'BindPaths', 'BindReadOnlyPaths']) {
    const covered = (settings.get(key) ?? []).flatMap((value) => value.split(/\s+/));
    expect(covered.filter((p) => /^[-+]?\/(run)?\/?$|^[-+]?\/run\/devgate/.test(p.split(':')[0]))).toEqual([]);
  }
});
