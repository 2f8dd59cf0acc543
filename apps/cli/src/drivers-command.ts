import { type Command } from 'commander';
import { type DriverReport } from '@devgate/core';
import { type AccessOptions, withAccess } from './device-access.js';
import { formatColumns } from './format.js';
import { type Io } from './io.js';
import { addHostOptions } from './host-options.js';

/**
 * `devgate drivers`: every device-class driver, where it came from (built in, or a driver package
 * devgated's configuration names) and its health; a refused package with the coded error that says
 * why. Through devgated, what it loaded; without it, what this command loads (the built-in drivers
 * and the packages of $DEVGATE_CONFIG or /etc/devgate/devgated.json).
 */
export function addDriversCommand(program: Command, io: Io): void {
  addHostOptions(
    program.command('drivers').description('list device-class drivers: where each comes from, and its health'),
  )
    .option('--json', 'print JSON')
    .action((options: AccessOptions & { json?: boolean }) =>
      withAccess(options, io, async (access) => {
        const drivers = await access.drivers();
        if (options.json) return io.out(JSON.stringify(drivers, null, 2) + '\n');
        io.out(formatColumns([['CLASS', 'MODULE', 'FROM', 'HEALTH'], ...drivers.map(row)]));
      }),
    );
}

function row(driver: DriverReport): string[] {
  const from =
    driver.origin === 'built-in'
      ? 'built-in'
      : `${driver.package ?? driver.module}${driver.path ? ` (${driver.path})` : ''}`;
  const health = driver.error ? `${driver.health}: ${driver.error.code}: ${driver.error.message}` : driver.health;
  return [driver.class ?? '-', driver.module, from, health];
}
