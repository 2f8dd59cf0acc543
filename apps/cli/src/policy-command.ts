// `devgate deny`, `devgate answers` and `devgate assignments`: devgated's persistent state, through
// its API. They need devgated (it keeps the state): without one they refuse with DG_DAEMON_UNAVAILABLE.
import { type Command, Option } from 'commander';
import {
  ApiError,
  type AssignmentJson,
  type DenyListChangeJson,
  type DenyListJson,
  type RememberedAnswerJson,
  callApi,
  daemonPresent,
  resolveSocket,
} from '@devgate/client';
import { DevgateError, Errors, categoryOf, isInterfaceCode } from '@devgate/core';
import { type Io } from './io.js';
import { formatColumns } from './format.js';

interface SocketOptions {
  readonly socket?: string;
}

type Api = <T>(method: 'GET' | 'POST', route: string, body?: unknown) => Promise<T>;

/** Qubes' VM name rule (devgated's): checked here so that a typo gets the catalogue's hint. */
function vmName(name: string): string {
  if (!/^[A-Za-z][A-Za-z0-9_.-]{0,30}$/.test(name)) throw Errors.invalidDomainName({ name });
  return name;
}

/** A device class name as devgated's API takes it. */
function className(name: string): string {
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(name)) {
    throw Errors.badOption({ option: '--class', reason: `'${name}' is not a device class name` });
  }
  return name;
}

/** Adds the commands to `devgate`. */
export function addPolicyCommands(program: Command, io: Io): void {
  const socketOption = () => new Option('--socket <path>', "devgated's API socket").env('DEVGATE_SOCKET');
  // Any class name: devgated filters by it (its state may hold classes whose driver is not loaded now).
  const classOption = (what: string) => new Option('--class <class>', what).argParser(className);

  const deny = program
    .command('deny')
    .description("deny lists: interface patterns a VM never receives by a manual attach (Qubes' devices_denied)");
  deny
    .command('list')
    .description('list the deny lists (of every VM, or of one)')
    .argument('[VMNAME]')
    .option('--json', 'print JSON')
    .addOption(socketOption())
    .action((vm: string | undefined, options: SocketOptions & { json?: boolean }) =>
      withDaemon(options, async (api) => {
        const lists =
          vm === undefined
            ? (await api<{ denyLists: DenyListJson[] }>('GET', '/v1/deny')).denyLists
            : [(await api<{ denyList: DenyListJson }>('GET', `/v1/deny/${vmName(vm)}`)).denyList];
        if (options.json) return io.out(JSON.stringify(vm === undefined ? lists : lists[0], null, 2) + '\n');
        const rows = lists.flatMap((l) => l.patterns.map((p) => [l.frontend, p, categoryOf(p)]));
        io.out(formatColumns([['VM', 'PATTERN', 'CATEGORY'], ...rows]));
      }),
    );
  const change = (op: 'add' | 'remove' | 'set', description: string, variadic: string) =>
    deny
      .command(op)
      .description(description)
      .argument('VMNAME')
      .argument(variadic, 'interface patterns: 7 characters, * for any, e.g. u03**** (HID), b****** (block)')
      .addOption(socketOption())
      .action((vm: string, patterns: string[], options: SocketOptions) => {
        // Arguments first: a usage error is one whether or not devgated runs.
        const codes = [...new Set(patterns)];
        for (const code of codes) if (!isInterfaceCode(code)) throw Errors.invalidInterfacePattern({ pattern: code });
        const route = `/v1/deny/${vmName(vm)}/${op === 'set' ? 'replace' : op}`;
        return withDaemon(options, async (api) => {
          await api<DenyListChangeJson>('POST', route, { patterns: codes });
          if (op !== 'remove' && codes.length > 0) {
            const { domains } = await api<{ domains: string[] }>('GET', '/v1/domains');
            if (!domains.includes(vm)) {
              io.err(`Warning: devgated knows no domain '${vm}'; the deny list applies to it once it does.\n`);
            }
          }
        });
      });
  change('add', 'add patterns to the deny list of a VM', 'PATTERN...');
  change('remove', 'remove patterns from the deny list of a VM (unknown ones are ignored)', 'PATTERN...');
  change('set', 'replace the deny list of a VM (no patterns: clear it)', '[PATTERN...]');

  const answers = program
    .command('answers')
    .description('answers to questions that devgated remembers (devgate ask answer ID allow --remember)');
  answers
    .command('list')
    .description('list the remembered answers')
    .option('--frontend <vm>', 'only those for this VM')
    .addOption(classOption('only this device class'))
    .option('--json', 'print JSON')
    .addOption(socketOption())
    .action((options: SocketOptions & { frontend?: string; class?: string; json?: boolean }) =>
      withDaemon(options, async (api) => {
        const query = new URLSearchParams();
        if (options.frontend !== undefined) query.set('frontend', vmName(options.frontend));
        if (options.class !== undefined) query.set('class', options.class);
        const list = (await api<{ answers: RememberedAnswerJson[] }>('GET', `/v1/answers?${query}`)).answers;
        if (options.json) return io.out(JSON.stringify(list, null, 2) + '\n');
        io.out(
          formatColumns([
            ['ID', 'CLASS', 'DEVICE', 'DEVICE ID', 'FRONTEND', 'VERDICT', 'SINCE', 'EXPIRES'],
            ...list.map((a) => [
              a.id,
              a.devclass,
              `${a.backend}:${a.portId}`,
              a.deviceId,
              a.frontend,
              a.verdict,
              a.createdAt,
              a.expiresAt ?? 'never',
            ]),
          ]),
        );
      }),
    );
  answers
    .command('forget')
    .description('forget remembered answers: one by ID, those of a VM and/or a class, or --all')
    .argument('[ID]', 'the id that devgate answers list shows')
    .option('--frontend <vm>', "this VM's answers")
    .addOption(classOption("this class's answers"))
    .option('--all', 'every remembered answer')
    .addOption(socketOption())
    .action((id: string | undefined, options: SocketOptions & { frontend?: string; class?: string; all?: boolean }) => {
      const filtered = options.frontend !== undefined || options.class !== undefined;
      if ([id !== undefined, filtered, Boolean(options.all)].filter(Boolean).length !== 1) {
        throw Errors.badOption({
          option: 'arguments',
          reason: 'say what to forget: an ID, --frontend VM and/or --class CLASS, or --all',
        });
      }
      if (id !== undefined && !/^[0-9a-f]{12}$/.test(id)) throw Errors.answerNotFound({ id });
      const body =
        id !== undefined
          ? { id }
          : options.all
            ? { all: true }
            : {
                ...(options.frontend !== undefined ? { frontend: vmName(options.frontend) } : {}),
                ...(options.class !== undefined ? { class: options.class } : {}),
              };
      return withDaemon(options, async (api) => {
        const { forgotten } = await api<{ forgotten: RememberedAnswerJson[] }>('POST', '/v1/answers/forget', body);
        io.out(`Forgot ${forgotten.length} remembered answer${forgotten.length === 1 ? '' : 's'}.\n`);
      });
    });

  program
    .command('assignments')
    .description('list every assignment (qvm-device CLASS assign/unassign change them)')
    .addOption(classOption('only this device class'))
    .option('--frontend <vm>', 'only those to this VM')
    .option('--json', 'print JSON')
    .addOption(socketOption())
    .action((options: SocketOptions & { class?: string; frontend?: string; json?: boolean }) =>
      withDaemon(options, async (api) => {
        const query = new URLSearchParams();
        if (options.class !== undefined) query.set('class', options.class);
        if (options.frontend !== undefined) query.set('frontend', options.frontend);
        const list = (await api<{ assignments: AssignmentJson[] }>('GET', `/v1/assignments?${query}`)).assignments;
        if (options.json) return io.out(JSON.stringify(list, null, 2) + '\n');
        io.out(
          formatColumns([
            ['CLASS', 'DEVICE', 'DEVICE ID', 'FRONTEND', 'MODE', 'OPTIONS'],
            ...list.map((a) => [
              a.devclass,
              `${a.backend}:${a.portId}`,
              a.deviceId,
              a.frontend,
              a.mode,
              Object.entries(a.options)
                .map(([k, v]) => `${k}=${v}`)
                .join(', '),
            ]),
          ]),
        );
      }),
    );
}

/**
 * Runs `work` against devgated; without one, refuses at once (there is nothing to do in-process:
 * the state lives in the daemon). API errors become the CLI's coded errors, with their hints.
 */
async function withDaemon<T>(options: SocketOptions, work: (api: Api) => Promise<T>): Promise<T> {
  const socket = resolveSocket(options.socket);
  if (!daemonPresent(socket)) {
    throw Errors.daemonUnavailable({ socket, reason: 'this needs devgated (it keeps the state)' });
  }
  try {
    return await work(<T>(method: 'GET' | 'POST', route: string, body?: unknown) =>
      callApi<T>(socket, method, route, body),
    );
  } catch (error) {
    if (error instanceof ApiError) {
      throw new DevgateError(error.code, error.message, error.hint, error.status === 400 ? 'usage' : 'runtime');
    }
    throw error;
  }
}
