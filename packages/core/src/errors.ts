/**
 * The one error catalogue. Every error a user can meet has a stable code, a message (Qubes' wording
 * where Qubes has one) and, where it helps, a hint. Two roots, as in Qubes: `DevgateError` is safe to
 * show a user; `DriverContractError` means a plugin broke the driver contract and names the driver.
 */

export class DevgateError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly hint?: string,
    /** Usage errors exit 2 (as argparse does), runtime errors exit 1. */
    readonly kind: 'usage' | 'runtime' = 'runtime',
  ) {
    super(message);
    this.name = 'DevgateError';
  }
}

export class DriverContractError extends Error {
  readonly code = 'DG_DRIVER_CONTRACT';
  constructor(
    readonly driverId: string,
    /** What the driver did wrong, without its name. */
    readonly reason: string,
  ) {
    super(`driver '${driverId}': ${reason}`);
    this.name = 'DriverContractError';
  }
}

type Template<P> = (params: P) => string;
interface Entry<P> {
  readonly code: string;
  readonly message: Template<P>;
  /** Nothing for a case that needs no hint. */
  readonly hint?: (params: P) => string | undefined;
  readonly kind?: 'usage' | 'runtime';
}

function define<P = void>(entry: Entry<P>): ((params: P) => DevgateError) & { readonly code: string } {
  const make = (params: P) =>
    new DevgateError(entry.code as ErrorCode, entry.message(params), entry.hint?.(params), entry.kind);
  return Object.assign(make, { code: entry.code });
}

export const Errors = {
  // -- arguments and configuration
  badDeviceArgument: define<{ arg: string }>({
    code: 'DG_BAD_DEVICE_ARGUMENT',
    kind: 'usage',
    message: (p) =>
      `expected a backend vm, port id and [optional] device id combination like foo:bar[:baz] got ${p.arg}`,
  }),
  unknownDeviceClass: define<{ devclass: string; known: readonly string[] }>({
    code: 'DG_UNKNOWN_DEVICE_CLASS',
    kind: 'usage',
    message: (p) => `unknown device class '${p.devclass}'`,
    hint: (p) => `known classes: ${p.known.join(', ')}`,
  }),
  badOption: define<{ option?: string; reason: string }>({
    code: 'DG_BAD_OPTION',
    kind: 'usage',
    // Without an option: a whole argparse message (`no such domain: 'x'`), which names no option.
    message: (p) => (p.option ? `${p.option}: ${p.reason}` : p.reason),
  }),
  recordingUnreadable: define<{ file: string; reason: string }>({
    code: 'DG_RECORDING_UNREADABLE',
    message: (p) => `cannot read recording '${p.file}': ${p.reason}`,
    hint: () => 'a recording is a umockdev file, a `udevadm info --export-db` dump or an lsblk sysfs tarball',
  }),
  sysrootUnreadable: define<{ root: string; reason: string }>({
    code: 'DG_SYSROOT_UNREADABLE',
    message: (p) => `cannot read host tree '${p.root}': ${p.reason}`,
    hint: () => 'the directory must hold sys/ (and may hold dev/, proc/ and run/udev/), as for lsblk --sysroot',
  }),

  // -- devices and domains
  noSuchBackend: define<{ backend: string }>({
    code: 'DG_NO_SUCH_BACKEND',
    message: (p) => `no backend vm '${p.backend}'`,
  }),
  backendExists: define<{ backend: string }>({
    code: 'DG_BACKEND_EXISTS',
    message: (p) => `a backend named '${p.backend}' is already read`,
  }),
  unknownDevice: define<{ backend: string; devclass: string; port: string; suggestion?: string }>({
    code: 'DG_UNKNOWN_DEVICE',
    message: (p) => `backend vm ${p.backend} doesn't expose ${p.devclass} device '${p.port}'`,
    hint: (p) => (p.suggestion ? `did you mean '${p.suggestion}'?` : `run 'devgate list --class ${p.devclass}'`),
  }),

  // -- attach and detach: the kernel's invariants, in the order it checks them
  unrecognizedIdentity: define<{ port: string; expected: string; actual: string }>({
    code: 'DG_UNRECOGNIZED_IDENTITY',
    message: (p) => `Unrecognized identity, skipping attachment of device from the port ${p.port}`,
    hint: (p) => `the device in that port is ${p.actual}, not ${p.expected}`,
  }),
  deviceInUse: define<{ device: string; reason: string }>({
    code: 'DG_DEVICE_IN_USE',
    message: (p) => `Device ${p.device} is in use in its backend (${p.reason})`,
    hint: () => 'unmount it (or stop what holds it) in the backend first',
  }),
  alreadyAttached: define<{ device: string; frontend: string }>({
    code: 'DG_ALREADY_ATTACHED',
    message: (p) => `Device ${p.device} already attached to ${p.frontend}`,
    hint: (p) => `detach it first: qvm-block detach ${p.frontend} ${p.device}`,
  }),
  overlap: define<{ device: string; other: string; frontend: string }>({
    code: 'DG_OVERLAP',
    message: (p) => `Device ${p.device} overlaps ${p.other}, which is attached to ${p.frontend}`,
    hint: () => 'a disk and its partitions, and a USB device and the disks under it, are one resource',
  }),
  attachInProgress: define<{ device: string }>({
    code: 'DG_ATTACH_IN_PROGRESS',
    message: (p) => `Device ${p.device} (or a device it overlaps) is being attached or detached right now`,
  }),
  readOnlyDevice: define({
    code: 'DG_READ_ONLY_DEVICE',
    message: () => 'This device can be attached only read-only',
    hint: () => 'use --ro',
  }),
  policyDenied: define<{ device: string; frontend: string; reason: string }>({
    code: 'DG_POLICY_DENIED',
    message: (p) => `Attaching ${p.device} to ${p.frontend} is denied: ${p.reason}`,
  }),
  unsupportedOption: define<{ option: string; message?: string }>({
    code: 'DG_UNSUPPORTED_OPTION',
    message: (p) => p.message ?? `Unsupported option ${p.option}`,
  }),
  notAttached: define<{ device: string; frontend?: string; inPort?: { port: string; deviceId?: string } }>({
    code: 'DG_NOT_ATTACHED',
    message: (p) => (p.frontend ? `device ${p.device} not attached to ${p.frontend}` : `${p.device} is not attached.`),
    // A device ID that names another device than the one in the port (Qubes refuses it the same way).
    hint: (p) =>
      p.inPort &&
      (p.inPort.deviceId
        ? `the device in ${p.inPort.port} is ${p.inPort.deviceId}`
        : `${p.inPort.port} lists no device`),
  }),
  notAttachable: define<{ device: string; backend: string; reason: string }>({
    code: 'DG_NOT_ATTACHABLE',
    message: (p) => `Device ${p.device} cannot be attached: ${p.reason}`,
    hint: (p) => `${p.backend} can list its devices, not hand them over; attach from a live backend such as dom0`,
  }),
  deviceChanged: define<{ device: string; reason: string }>({
    code: 'DG_DEVICE_CHANGED',
    message: (p) => `Device ${p.device} is no longer the device that was listed (${p.reason}); nothing was attached`,
    hint: () => 'list the devices again and retry',
  }),
  requiredDeviceAbsent: define<{ domain: string; device: string }>({
    code: 'DG_REQUIRED_DEVICE_ABSENT',
    message: (p) => `Domain ${p.domain} requires device ${p.device}, which is not present; the domain was not started`,
    hint: (p) => `plug the device in, or drop the requirement: qvm-device CLASS unassign ${p.domain} ${p.device}`,
  }),
  deviceGone: define<{ device: string }>({
    code: 'DG_DEVICE_GONE',
    message: (p) => `Device ${p.device} was removed while it was being attached; the attachment was undone`,
  }),
  busy: define<{ what: string }>({
    code: 'DG_BUSY',
    message: (p) => `another devgate command holds ${p.what}`,
    hint: () => 'try again in a moment',
  }),
  lockFailed: define<{ file: string; reason: string }>({
    code: 'DG_LOCK_FAILED',
    message: (p) => `cannot lock ${p.file}: ${p.reason}`,
    // Only when flock(1) itself could not run: the other reasons say what is in the way.
    hint: (p) =>
      p.reason.startsWith('flock: ')
        ? 'devgate takes its lock with flock(1) from util-linux: install util-linux'
        : undefined,
  }),
  noConnector: define<{ domain: string }>({
    code: 'DG_NO_CONNECTOR',
    message: (p) => `no such domain: '${p.domain}'`,
    hint: () => "start a lab VM with 'devgate lab up NAME', or add the domain to domains.json",
  }),

  // -- state (SQLite store)
  stateUnavailable: define<{ file: string; reason: string }>({
    code: 'DG_STATE_UNAVAILABLE',
    message: (p) => `state database '${p.file}' is unavailable: ${p.reason}`,
    hint: () => 'is it a devgated state database, with space left and a writable directory?',
  }),
  stateTooNew: define<{ file: string; version: number; supported: number }>({
    code: 'DG_STATE_TOO_NEW',
    message: (p) =>
      `state database '${p.file}' has schema version ${p.version}; this devgated knows versions up to ${p.supported}`,
    hint: () => 'run the newer devgated that wrote it, or restore a backup made by this version',
  }),
  stateMigrationFailed: define<{ file: string; version: number; reason: string }>({
    code: 'DG_STATE_MIGRATION_FAILED',
    message: (p) => `state database '${p.file}': migration to version ${p.version} failed: ${p.reason}`,
    hint: () => 'the database was left at the previous version',
  }),
  stateBusy: define<{ file: string }>({
    code: 'DG_STATE_BUSY',
    message: (p) => `state database '${p.file}' is locked by another process`,
    hint: () => 'is another devgated running on the same state directory?',
  }),
  stateClosed: define({
    code: 'DG_STATE_CLOSED',
    message: () => 'the state store is closed',
  }),
  invalidStateValue: define<{ field: string; value: string; reason: string }>({
    code: 'DG_INVALID_STATE_VALUE',
    kind: 'usage',
    message: (p) => `invalid ${p.field} '${p.value}': ${p.reason}`,
  }),
  invalidInterfacePattern: define<{ pattern: string }>({
    code: 'DG_INVALID_INTERFACE_PATTERN',
    kind: 'usage',
    // Qubes' wording (devices_denied), with devgate's extra class letters.
    message: (p) =>
      `invalid interface code '${p.pattern}': interface code list should be in the form chhhhhhchhhhhh..., ` +
      'where c is one of "b", "u", "m", "p", "i", "?", "*" and h is a hexdigit or "*".',
  }),
  manualNotAssignable: define({
    code: 'DG_MANUAL_NOT_ASSIGNABLE',
    kind: 'usage',
    message: () => 'Only auto-attachable devices can be assigned.',
    hint: () => "use mode 'auto-attach', 'ask-to-attach' or 'required', or attach without assigning",
  }),
  alreadyAssigned: define<{ devclass: string; device: string; frontend: string }>({
    code: 'DG_ALREADY_ASSIGNED',
    message: (p) => `${p.devclass} device ${p.device} already assigned to ${p.frontend}`,
  }),
  notAssigned: define<{ devclass: string; device: string; frontend: string }>({
    code: 'DG_NOT_ASSIGNED',
    message: (p) => `${p.devclass} device ${p.device} is not assigned to ${p.frontend}`,
  }),
  journalEntryNotPending: define<{ id: number; state: string }>({
    code: 'DG_JOURNAL_NOT_PENDING',
    message: (p) => `attachment journal entry ${p.id} is ${p.state}, not pending`,
  }),
  stateConstraint: define<{ constraint: string; reason: string }>({
    code: 'DG_STATE_CONSTRAINT',
    message: (p) => `state database refused a write (${p.constraint}): ${p.reason}`,
  }),

  // -- USB authorization (USBGuard rules)
  ruleSyntax: define<{ file: string; line: number; column: number; what: string }>({
    code: 'DG_RULE_SYNTAX',
    message: (p) => `${p.file}:${p.line}:${p.column}: ${p.what}`,
    hint: () => 'the supported USBGuard rule language is described in docs/usbguard-rules.md',
  }),

  // -- input devices and Qubes' input policy (qubes.InputKeyboard, InputMouse, InputTablet)
  inputPolicyInvalid: define<{ file: string; count: number }>({
    code: 'DG_INPUT_POLICY_INVALID',
    message: (p) => `${p.file}: ${p.count} problem${p.count === 1 ? '' : 's'} in the input policy`,
    hint: () => "the format is Qubes' qrexec policy, policy.d lines or old per-service files (docs/input.md)",
  }),
  inputPolicyUnreadable: define<{ file: string; reason: string }>({
    code: 'DG_INPUT_POLICY_UNREADABLE',
    message: (p) => `cannot read input policy '${p.file}': ${p.reason}`,
  }),

  // -- the desktop (devgate-tray)
  traySettingsFailed: define<{ command: string; reason: string }>({
    code: 'DG_TRAY_SETTINGS',
    message: (p) => `${p.command}: ${p.reason}`,
    hint: () => 'choose the command with devgate-tray --settings-command',
  }),

  // -- the daemon and its API
  configInvalid: define<{ location: string; reason: string; hint?: string }>({
    code: 'DG_CONFIG_INVALID',
    message: (p) => `${p.location}: ${p.reason}`,
    hint: (p) => p.hint ?? "check it with 'devgate config check FILE'",
  }),
  daemonUnavailable: define<{ socket: string; reason: string }>({
    code: 'DG_DAEMON_UNAVAILABLE',
    message: (p) => `devgated is not reachable at ${p.socket}: ${p.reason}`,
    hint: () => 'start it (systemctl start devgated), or pass --socket PATH / set DEVGATE_SOCKET',
  }),
  daemonAlreadyRunning: define<{ socket: string; reason?: string }>({
    code: 'DG_DAEMON_ALREADY_RUNNING',
    message: (p) =>
      p.reason
        ? `cannot tell whether another devgated listens on ${p.socket} (${p.reason}); refusing to replace it`
        : `another devgated is already listening on ${p.socket}`,
    hint: () => 'stop it first (systemctl stop devgated), or give this one another socket (--socket PATH)',
  }),
  notAllowed: define<{ socket: string }>({
    code: 'DG_NOT_ALLOWED',
    message: (p) => `you may not change devgate's state (no access to ${p.socket})`,
    hint: () => "an administrator can add you to the 'access' users or groups of devgated's configuration",
  }),
  apiBadRequest: define<{ reason: string }>({
    code: 'DG_API_BAD_REQUEST',
    kind: 'usage',
    message: (p) => `bad request: ${p.reason}`,
  }),
  apiNotFound: define<{ method: string; url: string }>({
    code: 'DG_API_NOT_FOUND',
    message: (p) => `no such API route: ${p.method} ${p.url}`,
    hint: () => 'the API is described in docs/openapi.json',
  }),
  apiTooLarge: define({
    code: 'DG_API_TOO_LARGE',
    message: () => 'request body too large',
  }),
  askNotFound: define<{ id: string }>({
    code: 'DG_ASK_NOT_FOUND',
    message: (p) => `no pending question '${p.id}'`,
  }),
  answerNotFound: define<{ id: string }>({
    code: 'DG_ANSWER_NOT_FOUND',
    message: (p) => `no remembered answer '${p.id}'`,
    hint: () => 'devgate answers list shows the remembered answers and their ids',
  }),
  askDenied: define<{ device: string; frontend: string; reason: string }>({
    code: 'DG_ASK_DENIED',
    message: (p) => `Attaching ${p.device} to ${p.frontend} was not allowed: ${p.reason}`,
  }),

  // -- USB passthrough and authorization
  usbIdUnknown: define<{ device: string }>({
    code: 'DG_USB_ID_UNKNOWN',
    message: (p) => `cannot attach ${p.device} by id: its vendor or product id is unknown or 0000`,
    hint: () => 'QEMU reads an id of 0 as "any device"; attach it by port (the default) instead',
  }),
  usbIdAmbiguous: define<{ device: string; twin: string }>({
    code: 'DG_USB_ID_AMBIGUOUS',
    message: (p) => `cannot attach ${p.device} by id: ${p.twin} has the same vendor and product id`,
    hint: () => "QEMU's filter has only those two ids and could take the other device; attach it by port (the default)",
  }),
  usbDescriptorsInvalid: define<{ device: string; reason: string }>({
    code: 'DG_USB_DESCRIPTORS_INVALID',
    message: (p) => `USB device ${p.device} has invalid descriptors: ${p.reason}`,
    hint: () => 'the device was blocked; a real device never presents these (USBGuard rejects it)',
  }),
  usbHashUnavailable: define<{ device: string; attribute: string; rule: string; reason: string }>({
    code: 'DG_USB_HASH_UNAVAILABLE',
    message: (p) => `cannot decide ${p.device}: ${p.rule} matches on ${p.attribute}, which is unknown (${p.reason})`,
    hint: () => 'the device was blocked; the hash needs its sysfs descriptors (a live host or a umockdev recording)',
  }),
  usbAuthorizationFailed: define<{ device: string; attribute: string; reason: string }>({
    code: 'DG_USB_AUTHORIZATION_FAILED',
    message: (p) => `cannot write ${p.attribute} of USB device ${p.device}: ${p.reason}`,
    hint: () => 'writing USB authorization attributes in sysfs needs root',
  }),
  rulesUnreadable: define<{ file: string; reason: string }>({
    code: 'DG_RULES_UNREADABLE',
    message: (p) => `cannot read rules file '${p.file}': ${p.reason}`,
  }),
  rulesWriteFailed: define<{ file: string; reason: string }>({
    code: 'DG_RULES_WRITE_FAILED',
    message: (p) => `cannot append to rules file '${p.file}': ${p.reason}`,
  }),
  rulesInvalid: define<{ file: string; count: number }>({
    code: 'DG_RULES_INVALID',
    message: (p) => `${p.file}: ${p.count} invalid rule${p.count === 1 ? '' : 's'}`,
    hint: () => 'the supported USBGuard rule language is described in docs/usbguard-rules.md',
  }),

  // -- PCI devices, VFIO and hiding USB controllers at boot
  noIommu: define<{ device: string; reason: string }>({
    code: 'DG_NO_IOMMU',
    message: (p) => `Device ${p.device} cannot be given to a VM: ${p.reason}; nothing was unbound`,
    hint: () =>
      'enable VT-d (Intel) or AMD-Vi in the firmware and boot with intel_iommu=on (or amd_iommu=on); ' +
      'without an IOMMU a VM could reach all of the host memory through the device',
  }),
  vfioUnavailable: define<{ reason: string }>({
    code: 'DG_VFIO_UNAVAILABLE',
    message: (p) => `the vfio-pci driver is not available: ${p.reason}`,
    hint: () => 'load it with modprobe vfio-pci (Debian and Fedora build it as a module)',
  }),
  pciBindFailed: define<{ device: string; driver: string; reason: string }>({
    code: 'DG_PCI_BIND_FAILED',
    message: (p) => `cannot bind ${p.device} to ${p.driver}: ${p.reason}`,
    hint: () => 'the devices of its IOMMU group that devgate had rebound were given back to their drivers',
  }),
  pciNoReset: define<{ device: string }>({
    code: 'DG_PCI_NO_RESET',
    message: (p) => `Device ${p.device} does not support any reset; a VM could leave state in it for the next one`,
    hint: () => "Qubes' -o no-strict-reset=True skips this check (it may leak usage data between VMs)",
  }),
  pciNotRequired: define({
    code: 'DG_PCI_NOT_REQUIRED',
    message: () => 'PCI devices cannot be assigned as not required.',
    hint: () => 'use qvm-pci assign --required VM DEVICE',
  }),
  pciNotOnVfio: define<{ device: string; driver: string }>({
    code: 'DG_PCI_NOT_ON_VFIO',
    message: (p) => `${p.device} is not held by vfio-pci (its driver is ${p.driver}); there is nothing to give back`,
  }),
  hideRefused: define<{ reason: string }>({
    code: 'DG_HIDE_REFUSED',
    message: (p) => `refusing to hide these controllers at boot: ${p.reason}`,
    hint: () => "devgate usb-controllers shows each controller's verdict and reasons",
  }),
  hideNothingToUndo: define<{ file: string }>({
    code: 'DG_HIDE_NOTHING_TO_UNDO',
    message: (p) => `nothing to undo: ${p.file} does not exist`,
    hint: () => 'only what devgate usb-controllers hide --apply wrote can be undone',
  }),
  hideAlreadyApplied: define<{ file: string }>({
    code: 'DG_HIDE_ALREADY_APPLIED',
    message: (p) => `controllers are already hidden by devgate (${p.file}); undo that first`,
    hint: () => 'devgate usb-controllers hide --undo',
  }),
  hideFileChanged: define<{ file: string }>({
    code: 'DG_HIDE_FILE_CHANGED',
    message: (p) => `${p.file} changed since devgate wrote it; nothing was restored`,
    hint: () => 'restore the file by hand, or undo your edit and run --undo again',
  }),

  // -- the plugin framework
  duplicateDriver: define<{ id: string }>({
    code: 'DG_DUPLICATE_DRIVER',
    message: (p) => `a driver with id '${p.id}' is already registered`,
  }),
  missingDependency: define<{ id: string; dependency: string }>({
    code: 'DG_MISSING_DEPENDENCY',
    message: (p) => `driver '${p.id}' depends on '${p.dependency}', which is not registered`,
  }),
  incompatibleDriver: define<{ id: string; wants: number; kernel: number }>({
    code: 'DG_INCOMPATIBLE_DRIVER',
    message: (p) => `driver '${p.id}' targets plugin API ${p.wants}, this kernel provides ${p.kernel}`,
  }),
  unsupported: define<{ driverId: string; operation: string }>({
    code: 'DG_UNSUPPORTED',
    message: (p) => `${p.driverId} driver does not support ${p.operation}`,
  }),
  kernelNotStarted: define({
    code: 'DG_KERNEL_NOT_STARTED',
    message: () => 'the device manager is not started',
  }),
  moduleNotFound: define<{ module: string; from: string; reason: string }>({
    code: 'DG_MODULE_NOT_FOUND',
    message: (p) => `driver package '${p.module}' cannot be found from ${p.from}: ${p.reason}`,
    hint: (p) =>
      `install it where the configuration is (cd ${p.from} && npm install ${p.module}), or name its directory by path`,
  }),
  moduleLoadFailed: define<{ module: string; reason: string }>({
    code: 'DG_MODULE_LOAD_FAILED',
    message: (p) => `driver package '${p.module}' was not loaded: ${p.reason}`,
    hint: () => 'a driver package exports its DevgateModule as `devgateModule` (or default); see docs/plugin-api.md',
  }),
  unsupportedAttachKind: define<{
    device: string;
    kind: string;
    frontend: string;
    connector: string;
    kinds: readonly string[];
  }>({
    code: 'DG_UNSUPPORTED_ATTACH_KIND',
    message: (p) =>
      `Device ${p.device} cannot be attached to ${p.frontend}: ${p.connector} cannot perform '${p.kind}' attachments; nothing was touched`,
    hint: (p) => `${p.connector} performs: ${p.kinds.join(', ') || 'nothing'}`,
  }),
  notProvided: define<{ token: string; requestedBy: string }>({
    code: 'DG_NOT_PROVIDED',
    message: (p) => `${p.requestedBy} asked for ${p.token}, which nothing provides in this kernel`,
    hint: () =>
      'devgated and the CLI provide every documented token; a test registers its own (kernel.container.register)',
  }),
  driverFault: define<{ driverId: string; source: string; reason: string }>({
    code: 'DG_DRIVER_FAULT',
    message: (p) => `driver '${p.driverId}' failed on ${p.source}: ${p.reason}`,
    hint: () => 'its last devices stay listed and it is retried with backoff; the other drivers are unaffected',
  }),

  // -- backend VMs and their agent (devgate-agent, docs/agent-protocol.md)
  agentUnavailable: define<{ backend: string; reason: string }>({
    code: 'DG_AGENT_UNAVAILABLE',
    message: (p) => `the agent of ${p.backend} is not available: ${p.reason}`,
    hint: () => 'is the backend VM running, with devgate-agent started in it?',
  }),
  agentViolation: define<{ backend: string; reason: string }>({
    code: 'DG_AGENT_VIOLATION',
    message: (p) => `the agent of ${p.backend} broke the protocol and was cut off: ${p.reason}`,
    hint: () => "its devices are gone until it reconnects; 'devgate audit --action agent' lists what it did",
  }),
  agentTimeout: define<{ backend: string; waitingFor: string; timeoutMs: number }>({
    code: 'DG_AGENT_TIMEOUT',
    message: (p) => `the agent of ${p.backend} did not answer ${p.waitingFor} within ${p.timeoutMs} ms`,
  }),
  agentRefused: define<{ backend: string; device: string; reason: string }>({
    code: 'DG_AGENT_REFUSED',
    message: (p) => `${p.backend} could not export ${p.device}: ${p.reason}`,
  }),
  noInputPath: define<{ device: string; reason: string }>({
    code: 'DG_NO_INPUT_PATH',
    message: (p) => `no input path for ${p.device}: ${p.reason}`,
  }),
  noFreeExportPort: define<{ backend: string; ports: number }>({
    code: 'DG_NO_FREE_EXPORT_PORT',
    message: (p) => `${p.backend} has no free export port (all ${p.ports} are in use)`,
    hint: () => 'detach a device of it first, or give the VM more export ports',
  }),
  usbvmExists: define<{ name: string }>({
    code: 'DG_USBVM_EXISTS',
    message: (p) => `a USB VM '${p.name}' already exists`,
    hint: (p) => `remove it first: devgate usbvm remove --name ${p.name}`,
  }),
  notUsbvm: define<{ name: string }>({
    code: 'DG_NOT_USBVM',
    message: (p) => `'${p.name}' is not a USB VM made by 'devgate usbvm create'`,
  }),

  // -- hypervisor (QEMU)
  qmpUnreachable: define<{ socket: string; reason: string }>({
    code: 'DG_QMP_UNREACHABLE',
    message: (p) => `cannot connect to QMP socket '${p.socket}': ${p.reason}`,
    hint: () => 'is the QEMU process running, and was it started with -qmp unix:<path>,server=on,wait=off?',
  }),
  qmpTimeout: define<{ socket: string; waitingFor: string; timeoutMs: number }>({
    code: 'DG_QMP_TIMEOUT',
    message: (p) => `QMP socket '${p.socket}': no answer to ${p.waitingFor} within ${p.timeoutMs} ms`,
    hint: (p) =>
      p.waitingFor === 'the greeting'
        ? 'a QMP socket serves one client at a time: is another client (devgated, a qmp-shell) connected?'
        : 'the QEMU process may be stopped (SIGSTOP) or stuck in a long-running command',
  }),
  qmpDisconnected: define<{ socket: string; reason: string }>({
    code: 'DG_QMP_DISCONNECTED',
    message: (p) => `QMP socket '${p.socket}' disconnected: ${p.reason}`,
  }),
  qmpProtocol: define<{ socket: string; reason: string }>({
    code: 'DG_QMP_PROTOCOL',
    message: (p) => `QMP socket '${p.socket}' does not speak QMP: ${p.reason}`,
  }),
  qmpCommandFailed: define<{ command: string; errorClass: string; desc: string }>({
    code: 'DG_QMP_COMMAND_FAILED',
    message: (p) => `QMP command '${p.command}' failed: ${p.errorClass}: ${p.desc}`,
  }),
  detachTimeout: define<{ domain: string; device: string; timeoutMs: number }>({
    code: 'DG_DETACH_TIMEOUT',
    message: (p) => `${p.domain} did not release ${p.device} within ${p.timeoutMs} ms`,
    hint: () => 'the guest must acknowledge the unplug (PCI devices need a running guest OS); it stays attached',
  }),
  noFreeFrontend: define<{ domain: string; what: string }>({
    code: 'DG_NO_FREE_FRONTEND',
    message: (p) => `${p.domain} has no free ${p.what}`,
  }),
  frontendDevInUse: define<{ domain: string; dev: string }>({
    code: 'DG_FRONTEND_DEV_IN_USE',
    message: (p) => `${p.dev} is already used in ${p.domain}`,
  }),
  domainNotRunning: define<{ domain: string; role: 'backend' | 'frontend' }>({
    code: 'DG_DOMAIN_NOT_RUNNING',
    // Qubes' wording for a backend; the frontend wording is devgate's own.
    message: (p) =>
      p.role === 'backend'
        ? `Domain ${p.domain} needs to be running to attach device from it`
        : `domain ${p.domain} is not running`,
  }),
  noSuchDomain: define<{ domain: string; file: string }>({
    code: 'DG_NO_SUCH_DOMAIN',
    message: (p) => `no such domain: '${p.domain}'`,
    hint: (p) => `domains are listed in ${p.file}`,
  }),
  invalidDomainName: define<{ name: string }>({
    code: 'DG_INVALID_DOMAIN_NAME',
    kind: 'usage',
    message: (p) => `invalid domain name '${p.name}'`,
    hint: () => 'at most 31 characters: a letter, then letters, digits, _ . or -',
  }),
  registryInvalid: define<{ file: string; path: string; reason: string }>({
    code: 'DG_REGISTRY_INVALID',
    message: (p) => `domain registry ${p.file}: ${p.path}: ${p.reason}`,
  }),
  domainExists: define<{ domain: string; file: string }>({
    code: 'DG_DOMAIN_EXISTS',
    message: (p) => `domain '${p.domain}' already exists in ${p.file}`,
  }),
  notLabDomain: define<{ domain: string }>({
    code: 'DG_NOT_LAB_DOMAIN',
    message: (p) => `domain '${p.domain}' was not started by 'devgate lab up'; refusing to stop it`,
  }),
  labStartFailed: define<{ domain: string; reason: string }>({
    code: 'DG_LAB_START_FAILED',
    message: (p) => `cannot start lab domain '${p.domain}': ${p.reason}`,
  }),

  // -- hypervisor (libvirt)
  libvirtUnreachable: define<{ uri: string; reason: string }>({
    code: 'DG_LIBVIRT_UNREACHABLE',
    message: (p) => `cannot reach libvirt at ${p.uri}: ${p.reason}`,
    hint: (p) =>
      /\+(ssh|tcp|tls)|\/\/[^/]/.test(p.uri)
        ? 'is libvirtd running on that host, and does the URI name it (virsh -c URI list)?'
        : 'is libvirtd running? start it (systemctl start libvirtd, or virtqemud.socket), then retry',
  }),
  libvirtPermission: define<{ uri: string; reason: string }>({
    code: 'DG_LIBVIRT_PERMISSION',
    message: (p) => `no permission to use libvirt at ${p.uri}: ${p.reason}`,
    hint: () => "run devgated as root, or add its user to the 'libvirt' group (then log in again)",
  }),
  libvirtRefused: define<{ domain: string; operation: string; reason: string; hint?: string }>({
    code: 'DG_LIBVIRT_REFUSED',
    message: (p) => `libvirt refused to ${p.operation} on ${p.domain}: ${p.reason}`,
    hint: (p) => p.hint ?? "libvirt's own reason is quoted above; nothing was changed",
  }),
  libvirtNotDevgates: define<{ device: string; domain: string; alias: string }>({
    code: 'DG_LIBVIRT_NOT_DEVGATES',
    message: (p) =>
      `${p.device} was attached to ${p.domain} outside devgate (libvirt alias ${p.alias}); devgate leaves it alone`,
    hint: (p) => `detach it the way it was attached, e.g. virsh detach-device-alias ${p.domain} ${p.alias} --live`,
  }),
} as const;

export type ErrorCode = string & { readonly __errorCode?: never };

/** The code of any error, for logs and API responses. */
export function errorCode(error: unknown): string {
  if (error instanceof DevgateError || error instanceof DriverContractError) return error.code;
  return 'DG_INTERNAL';
}
