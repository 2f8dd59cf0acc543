/**
 * `devgate usbvm`: the USB VM (Qubes' sys-usb), see usbvm.ts.
 *
 *   devgate usbvm create --emulated [--name sys-usb] [--export-ports N] [--memory MIB] [--accel A] [--udev]
 *                        [--usb-rules FILE]
 *   devgate usbvm create --controller BDF ...   (refused with the controller report's reasons where unsafe)
 *   devgate usbvm remove [--name sys-usb] [--yes]
 */
import * as readline from 'node:readline';
import { type Command, Option } from 'commander';
import { Errors } from '@devgate/core';
import { formatColumns } from './format.js';
import { type Io } from './io.js';
import { REMOVE_WARNING, checkController, createEmulatedUsbVm, removeUsbVm } from './usbvm.js';

interface CreateOptions {
  domains?: string;
  name: string;
  emulated?: boolean;
  controller?: string;
  exportPorts: string;
  memory: string;
  accel?: 'auto' | 'kvm' | 'tcg';
  udev?: boolean;
  usbRules?: string;
}

export function addUsbVmCommands(program: Command, io: Io): void {
  const usbvm = program
    .command('usbvm')
    .description("the USB VM (Qubes' sys-usb): USB devices handled in a VM, never by the host");
  const registry = (command: Command) =>
    command.addOption(new Option('--domains <file>', 'the domain registry').env('DEVGATE_DOMAINS'));

  registry(usbvm.command('create').description('create and start the USB VM, with devgate-agent in it'))
    .option('--name <name>', 'its name', 'sys-usb')
    .option('--emulated', 'an emulated xHCI controller (demos, tests): plug devices with devgate lab plug NAME KIND')
    .option('--controller <BDF>', 'give it this USB controller (VFIO; see devgate usb-controllers)')
    .option('--export-ports <n>', 'devices that can be attached from it at once', '4')
    .option('--memory <MiB>', 'its memory', '512')
    .addOption(
      new Option('--accel <accel>', 'accelerator (auto: KVM if it runs a guest)').choices(['auto', 'kvm', 'tcg']),
    )
    .option('--udev', 'run systemd-udevd in it')
    .option('--usb-rules <file>', 'USBGuard rules its agent applies to its USB devices')
    .action(async (options: CreateOptions) => {
      if (options.controller) return checkController(options.controller);
      if (!options.emulated) {
        throw Errors.badOption({
          option: '--emulated',
          reason: 'say what the USB VM gets: --emulated, or --controller BDF',
        });
      }
      const memoryMb = Number(options.memory);
      if (!Number.isInteger(memoryMb) || memoryMb < 256) {
        throw Errors.badOption({ option: '--memory', reason: 'a number of MiB, at least 256' });
      }
      const vm = await createEmulatedUsbVm({
        name: options.name,
        registryFile: options.domains,
        exportPorts: Number(options.exportPorts),
        memoryMb,
        accel: options.accel,
        udev: options.udev,
        usbRules: options.usbRules,
      });
      io.out(
        formatColumns([
          [
            vm.name,
            `pid ${vm.pid}`,
            `emulated xHCI, ${Object.keys(vm.agent.exports).length} export ports`,
            `${vm.accel}, agent ready in ${(vm.readyMs / 1000).toFixed(1)} s`,
          ],
        ]),
      );
      io.notice(
        `plug devices into it with 'devgate lab plug ${vm.name} usb-storage --image FILE'; ` +
          `a running devgated reads it once restarted\n`,
      );
    });

  registry(usbvm.command('remove').description('shut the USB VM down and remove it'))
    .option('--name <name>', 'its name', 'sys-usb')
    .option('--yes', 'do not ask (scripts)')
    .action(async (options: { domains?: string; name: string; yes?: boolean }) => {
      io.err(REMOVE_WARNING);
      if (!options.yes) {
        if (!io.isTTY || !process.stdin.isTTY) {
          throw Errors.badOption({
            option: '--yes',
            reason: 'removing a USB VM needs a confirmation: answer on a terminal, or pass --yes',
          });
        }
        if (!(await confirm(`Remove ${options.name}? [y/N] `))) return io.err('nothing was removed\n');
      }
      const removed = await removeUsbVm({ name: options.name, registryFile: options.domains });
      io.out(
        `${removed.name} removed${removed.controllers.length ? `; controllers given back: ${removed.controllers.join(', ')}` : ''}\n`,
      );
    });
}

function confirm(question: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  return new Promise((resolve) =>
    rl.question(question, (answer) => {
      rl.close();
      resolve(/^y(es)?$/i.test(answer.trim()));
    }),
  );
}
