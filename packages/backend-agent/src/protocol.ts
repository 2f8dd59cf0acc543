/**
 * The devgate-agent protocol, version 1 (docs/agent-protocol.md). One JSON object per line each
 * way, every object with `"v": 1` and a `type`. The agent speaks first (`hello`), then sends its
 * device tree whenever it changes (`tree`: complete snapshots of raw sysfs records, never devgate's
 * own device model), replies to requests (`reply`), says when an export ended (`export-ended`), and
 * sends the events of input devices it was asked to forward (`input`, `input-ended`).
 * devgated sends `request`s: `export`, `unexport`, `input-forward`, `input-stop`, `ping`, `hello`.
 *
 * Nothing the agent sends names a backend, a port of another class or an attachment: devgated
 * builds the devices itself, with its own drivers, under the backend name it configured for the
 * agent. A message with anything else in it is a protocol violation, and the agent is cut off.
 */

export const PROTOCOL_VERSION = 1;

/** The control channel's port name (a virtio-serial port in the backend VM). */
export const CONTROL_PORT_NAME = 'org.devgate.agent';
/** Export ports: `org.devgate.export.0`, `.1`, ... (virtio-serial ports whose host side a frontend's QEMU connects to). */
export const EXPORT_PORT_PREFIX = 'org.devgate.export.';

export function exportPortName(index: number): string {
  return `${EXPORT_PORT_PREFIX}${index}`;
}

/** Bounds devgated enforces on what an agent sends; crossing one cuts the agent off. */
export interface AgentLimits {
  /** Longest line of all (a `tree`). */
  readonly maxTreeBytes: number;
  /** Longest line of any other message. */
  readonly maxMessageBytes: number;
  readonly maxRecords: number;
  readonly maxPropertiesPerRecord: number;
  readonly maxValueChars: number;
  readonly maxUsageEntries: number;
  /** Trees applied per second at most; more are coalesced (the newest wins). */
  readonly treesPerSecond: number;
  /** Messages per `floodWindowMs` beyond which the agent is flooding, and is cut off. */
  readonly floodMessages: number;
  /** Bytes per `floodWindowMs` beyond which the agent is flooding. */
  readonly floodBytes: number;
  /** Time devgated may spend parsing one agent's messages per `floodWindowMs`: a bound on what it costs. */
  readonly floodParseMs: number;
  readonly floodWindowMs: number;
  /**
   * Bytes received before the `hello`, skipped: what the agent was writing when the previous host
   * connection went (one write, at most a tree) reaches the next connection first.
   */
  readonly maxPreHelloBytes: number;
}

export const DEFAULT_LIMITS: AgentLimits = {
  maxTreeBytes: 4 * 1024 * 1024,
  maxMessageBytes: 16 * 1024,
  maxRecords: 4096,
  maxPropertiesPerRecord: 256,
  maxValueChars: 16 * 1024,
  maxUsageEntries: 4096,
  treesPerSecond: 20,
  // Input forwards send up to about 60 frames a second each (the agent coalesces beyond that).
  floodMessages: 4000,
  floodBytes: 32 * 1024 * 1024,
  floodParseMs: 1_000,
  floodWindowMs: 10_000,
  maxPreHelloBytes: 4 * 1024 * 1024 + 64 * 1024,
};

/**
 * Bounds of a record's devpath, far above any real one: a USB disk's partition behind seven hub tiers
 * is about 20 segments and 300 characters, a Thunderbolt chain adds a few PCI bridges to that. A
 * hostile agent's deep paths cost devgated per segment wherever a path is taken apart; past these
 * bounds a tree is a violation.
 */
export const MAX_DEVPATH_CHARS = 1024;
export const MAX_DEVPATH_SEGMENTS = 64;

/**
 * The sysfs attributes an agent sends, per subsystem: exactly what devgate's drivers read (a test
 * checks the drivers against this list). Any other attribute name is a violation.
 */
export const WIRE_ATTRIBUTES: Readonly<Record<string, readonly string[]>> = {
  block: [
    'size',
    'ro',
    'removable',
    'partition',
    'dev',
    'dm/name',
    'loop/backing_file',
    'pid',
    'device/model',
    'device/vendor',
    'device/serial',
  ],
  // A disk's model, vendor and serial sit on the device above it (scsi, nvme, mmc, virtio).
  scsi: ['model', 'vendor', 'serial'],
  nvme: ['model', 'vendor', 'serial'],
  mmc: ['model', 'vendor', 'serial', 'name'],
  virtio: ['model', 'vendor', 'serial'],
  usb: [
    'authorized',
    'bDeviceClass',
    'bDeviceSubClass',
    'bDeviceProtocol',
    'bInterfaceClass',
    'bInterfaceSubClass',
    'bInterfaceProtocol',
    'bInterfaceNumber',
    'bConfigurationValue',
    'bNumInterfaces',
    'busnum',
    'devnum',
    'speed',
    'serial',
    'manufacturer',
    'product',
    'idVendor',
    'idProduct',
    'bcdDevice',
    'removable',
    'modalias',
  ],
  input: [
    'name',
    'uniq',
    'phys',
    'dev',
    'modalias',
    'id/bustype',
    'id/vendor',
    'id/product',
    'id/version',
    'capabilities/ev',
    'capabilities/key',
    'capabilities/rel',
    'capabilities/abs',
    'capabilities/msc',
    'capabilities/sw',
    'capabilities/led',
  ],
  pci: [
    'vendor',
    'device',
    'class',
    'subsystem_vendor',
    'subsystem_device',
    'revision',
    'boot_vga',
    'reset_method',
    'secondary_bus_number',
    'modalias',
  ],
};

/** Directory listings an agent sends, per subsystem. */
export const WIRE_ENTRIES: Readonly<Record<string, readonly string[]>> = { block: ['holders'] };

/** Symlinks an agent sends (raw readlink targets), per subsystem. */
export const WIRE_LINKS: Readonly<Record<string, readonly string[]>> = { usb: ['driver'], pci: ['driver'] };

// -- messages, as they are on the wire

export interface WireRecord {
  readonly devpath: string;
  readonly subsystem: string;
  readonly properties: Readonly<Record<string, string>>;
  readonly attributes?: Readonly<Record<string, string>>;
  readonly entries?: Readonly<Record<string, readonly string[]>>;
  readonly links?: Readonly<Record<string, string>>;
}

export interface WireUsage {
  /** `major:minor` of every mounted block device. */
  readonly mounted: readonly string[];
  /** Device nodes in use as swap. */
  readonly swaps: readonly string[];
  /** `major:minor` of the device-mapper devices some program holds open (absent: not known). */
  readonly heldOpen?: readonly string[];
  /** `major:minor` of the loop devices whose image a `.qubes-exclude-block-devices` file excludes. */
  readonly excludedLoops?: readonly string[];
}

/** What an agent can do for devgated: export a block device (nbd), a USB device (usbredir), send input events. */
export type ExportKind = 'nbd' | 'usbredir' | 'input';

export interface HelloMessage {
  readonly v: 1;
  readonly type: 'hello';
  /** The agent's own name and version, for logs only (`devgate-agent 0.1.0`). */
  readonly agent: string;
  /** What it can export. */
  readonly exports: readonly ExportKind[];
  /** The export ports it found in its VM. */
  readonly ports: readonly string[];
  /** Those of them still serving an export (one made before devgated restarted): not free. */
  readonly busy?: readonly string[];
}

export interface TreeMessage {
  readonly v: 1;
  readonly type: 'tree';
  readonly seq: number;
  readonly records: readonly WireRecord[];
  readonly usage: WireUsage;
}

export interface ReplyMessage {
  readonly v: 1;
  readonly type: 'reply';
  readonly id: number;
  readonly ok: boolean;
  /** When not ok: a short code of the agent's own (`EXPORT_FAILED`, ...) and a message; both are untrusted text. */
  readonly error?: { readonly code: string; readonly message: string };
}

export interface ExportEndedMessage {
  readonly v: 1;
  readonly type: 'export-ended';
  readonly export: string;
  readonly reason: string;
  /**
   * False when the export's port still holds bytes for a frontend that left (a write the guest
   * kernel keeps until the next connection): the host must drain the port before reusing it.
   */
  readonly clean: boolean;
}

/**
 * Events of a forward's event nodes (Qubes' input proxy): whole frames, each `[node, type, code,
 * value]` with `node` an index into the forward's `nodes`, the last of each frame EV_SYN SYN_REPORT.
 */
export interface InputMessage {
  readonly v: 1;
  readonly type: 'input';
  readonly forward: string;
  readonly events: readonly (readonly [number, number, number, number])[];
}

/** The forward is over: its device went, or it could not be read. */
export interface InputEndedMessage {
  readonly v: 1;
  readonly type: 'input-ended';
  readonly forward: string;
  readonly reason: string;
}

export type AgentMessage =
  HelloMessage | TreeMessage | ReplyMessage | ExportEndedMessage | InputMessage | InputEndedMessage;

/** What devgated asks an agent to forward: an input device's event nodes, as they were listed. */
export interface InputForwardSpec {
  readonly id: string;
  readonly nodes: readonly { readonly devname: string; readonly majorMinor: string }[];
}

/** Bounds of input forwarding: nodes per forward, events per message. */
export const MAX_FORWARD_NODES = 16;
export const MAX_INPUT_EVENTS = 256;

/** What devgated asks an agent to export. */
export type ExportSpec = ExportCommon &
  (
    | {
        readonly kind: 'nbd';
        /** Kernel name in the VM (`sda1`) and the major:minor it was listed with. */
        readonly devname: string;
        readonly majorMinor: string;
        readonly readOnly: boolean;
      }
    | {
        readonly kind: 'usbredir';
        /** The USB busid in the VM (`1-2`) and the ids it was listed with. */
        readonly busid: string;
        readonly vendorId: string;
        readonly productId: string;
      }
  );

interface ExportCommon {
  readonly id: string;
  /** The export port it goes out on. */
  readonly port: string;
  /** The agent withdraws the export if no frontend connected within this long. */
  readonly armTimeoutMs?: number;
}

export type HostRequest =
  | { readonly v: 1; readonly type: 'request'; readonly id: number; readonly op: 'export'; readonly export: ExportSpec }
  | { readonly v: 1; readonly type: 'request'; readonly id: number; readonly op: 'unexport'; readonly export: string }
  | { readonly v: 1; readonly type: 'request'; readonly id: number; readonly op: 'ping' }
  | {
      readonly v: 1;
      readonly type: 'request';
      readonly id: number;
      readonly op: 'input-forward';
      readonly forward: InputForwardSpec;
    }
  | {
      readonly v: 1;
      readonly type: 'request';
      readonly id: number;
      readonly op: 'input-stop';
      readonly forward: string;
    }
  /** Say hello again (and send the tree): a connection that came before the agent saw the last one go. */
  | { readonly v: 1; readonly type: 'request'; readonly id: number; readonly op: 'hello' };

/** An export id: what a qemu-nbd export name and a file name may hold. */
export const EXPORT_ID = /^[a-z0-9][a-z0-9-]{0,40}$/;

/** An input forward id, as devgated makes them: `i` and 12 hex digits. */
export const FORWARD_ID = /^i[0-9a-f]{12}$/;
