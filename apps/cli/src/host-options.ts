import { type Command, Option } from 'commander';

/**
 * Options every program takes to choose where devices are read from (a tree laid out like `/`, a
 * recording, the backend domain, the domain registry, devgated's socket). The command files add
 * them to their commands; main.ts only composes the programs.
 */
export function addHostOptions(command: Command): Command {
  return command
    .addOption(new Option('--sysroot <dir>', 'read sys/, dev/, proc/ and run/udev/ under DIR instead of /'))
    .addOption(
      new Option('--recording <file>', 'read a recorded host (umockdev, udevadm export-db, sysfs tarball)').conflicts(
        'sysroot',
      ),
    )
    .addOption(new Option('--backend <name>', 'the backend domain name of these devices').default('dom0'))
    .addOption(new Option('--domains <file>', 'the domain registry').env('DEVGATE_DOMAINS'))
    .addOption(new Option('--socket <path>', "devgated's API socket").env('DEVGATE_SOCKET'));
}
