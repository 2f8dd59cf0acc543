/**
 * devgate-agent's command line:
 *
 *   devgate-agent [--port NAME | --listen PATH] [--usb-rules FILE [--usb-implicit-target T]] [--run-dir DIR]
 *
 *   --port NAME      the control channel: the virtio-serial port the host named NAME
 *                    (default org.devgate.agent)
 *   --listen PATH    instead: listen on a Unix socket (tests, or an agent beside devgated)
 *   --usb-rules FILE USBGuard rules applied to this VM's USB devices; --usb-implicit-target
 *                    allow|block|reject for devices no rule matches (default block)
 *   --run-dir DIR    export sockets and pid files (default /run/devgate-agent)
 */
import { CONTROL_PORT_NAME } from '@devgate/backend-agent';
import { DevgateAgent } from './agent.js';
import { type ControlTransport, UnixListenControl, VirtioControl } from './control-channel.js';
import { findVirtioPort } from './virtio-port.js';

export function parseArgs(argv: readonly string[]): Record<string, string> {
  const options: Record<string, string> = {};
  const known = new Set(['port', 'listen', 'usb-rules', 'usb-implicit-target', 'run-dir']);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--help' || arg === '-h') {
      options.help = '1';
      continue;
    }
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m || !known.has(m[1])) throw new Error(`unknown argument '${arg}' (see --help)`);
    const value = m[2] ?? argv[++i];
    if (value === undefined) throw new Error(`${arg} needs a value`);
    options[m[1]] = value;
  }
  return options;
}

export function runAgent(argv: readonly string[]): DevgateAgent | undefined {
  const options = parseArgs(argv);
  if (options.help) {
    process.stdout.write(
      'usage: devgate-agent [--port NAME | --listen PATH] [--usb-rules FILE [--usb-implicit-target allow|block|reject]] [--run-dir DIR]\n',
    );
    return undefined;
  }
  let transport: ControlTransport;
  if (options.listen) transport = new UnixListenControl(options.listen);
  else {
    const name = options.port ?? CONTROL_PORT_NAME;
    const device = findVirtioPort(name);
    if (!device)
      throw new Error(`this VM has no virtio-serial port named ${name} (see /sys/class/virtio-ports/*/name)`);
    transport = new VirtioControl(device);
  }
  const target = options['usb-implicit-target'] ?? 'block';
  if (!['allow', 'block', 'reject'].includes(target)) throw new Error('--usb-implicit-target: allow, block or reject');
  const agent = new DevgateAgent({
    transport,
    runDir: options['run-dir'],
    usbPolicy: options['usb-rules']
      ? { rules: options['usb-rules'], implicitTarget: target as 'allow' | 'block' | 'reject' }
      : undefined,
  }).start();
  const stop = () => {
    agent.dispose();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return agent;
}
