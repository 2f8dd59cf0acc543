import { HostTree, type RawDeviceRecord, recordOf } from './host-tree';

// What drivers ask a tree (parents, ancestors, descendants), and that asking stays cheap however
// deep the paths are: a backend VM's agent chooses them.

const record = (devpath: string, subsystem = 'block') => recordOf(devpath, subsystem, {});
const paths = (records: readonly RawDeviceRecord[]) => records.map((r) => r.devpath);

/** The answers by definition: walk up one segment at a time, or filter every record by prefix. */
function parentByWalk(tree: HostTree, devpath: string): string | undefined {
  for (let path = devpath.slice(0, devpath.lastIndexOf('/')); path.length > 8;) {
    if (tree.device(path)) return path;
    path = path.slice(0, path.lastIndexOf('/'));
  }
  return undefined;
}
function descendantsByFilter(tree: HostTree, devpath: string, subsystem?: string): string[] {
  return paths(tree.devices(subsystem).filter((d) => d.devpath.startsWith(devpath + '/')));
}

describe('HostTree', () => {
  // `-`, `.` and `:` sort before `/`: a sibling `sda-x` comes between `sda` and `sda/sda1` by plain order.
  const tree = new HostTree([
    record('/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda/sda1'),
    record('/devices/pci0000:00/0000:00:14.0/usb1/1-1', 'usb'),
    record('/devices/pci0000:00/0000:00:14.0/usb1/1-1:1.0', 'usb'),
    record('/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda'),
    record('/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda-x'),
    record('/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda/sda2'),
    record('/devices', ''),
    record('/devices/virtual/block/loop0'),
  ]);
  const usbDevice = tree.device('/devices/pci0000:00/0000:00:14.0/usb1/1-1')!;
  const disk = tree.device('/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda')!;

  it('finds the nearest recorded ancestor past unrecorded directories, never /devices itself', () => {
    expect(tree.parent(tree.device(`${disk.devpath}/sda1`)!)).toBe(disk);
    expect(tree.parent(tree.device(`${disk.devpath}-x`)!)).toBe(usbDevice);
    expect(tree.parent(disk)).toBe(usbDevice);
    expect(tree.parent(usbDevice)).toBeUndefined();
    expect(tree.parent(tree.device('/devices/virtual/block/loop0')!)).toBeUndefined();
    expect(paths([...tree.ancestors(tree.device(`${disk.devpath}/sda2`)!)])).toEqual([disk.devpath, usbDevice.devpath]);
  });

  it("lists descendants in the tree's own order, by subsystem, and not a sibling that shares a prefix", () => {
    expect(paths(tree.descendants(disk))).toEqual([`${disk.devpath}/sda1`, `${disk.devpath}/sda2`]);
    expect(paths(tree.descendants(usbDevice))).toEqual([
      `${disk.devpath}/sda1`,
      disk.devpath,
      `${disk.devpath}-x`,
      `${disk.devpath}/sda2`,
    ]);
    expect(tree.descendants(usbDevice, 'usb')).toEqual([]);
    expect(tree.descendants(tree.device('/devices')!, 'usb').length).toBe(2);
  });

  it('answers for a record it does not hold by its path', () => {
    const stranger = record(`${disk.devpath}/sda9/holder`);
    expect(tree.parent(stranger)).toBe(disk);
    expect(tree.descendants(record('/devices/pci0000:00/0000:00:14.0'), 'usb').length).toBe(2);
    expect(tree.parent(record('elsewhere'))).toBeUndefined();
  });

  it('gives the same answers as walking up and filtering, for random trees', () => {
    let seed = 7;
    const next = (n: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    const names = ['a', 'a-b', 'a.1', 'a:0', 'b', 'sda', 'sda1', '1-1', '1-1.2'];
    for (let round = 0; round < 20; round++) {
      const records: RawDeviceRecord[] = [];
      for (let i = 0; i < 200; i++) {
        let devpath = '/devices';
        for (let depth = 1 + next(6); depth > 0; depth--) devpath += '/' + names[next(names.length)];
        records.push(record(devpath, next(2) ? 'block' : 'usb'));
      }
      const random = new HostTree(records);
      const answers = (
        parent: (r: RawDeviceRecord) => string | undefined,
        under: (r: RawDeviceRecord, subsystem?: string) => string[],
      ) => random.devices().map((r) => [r.devpath, parent(r), under(r, 'usb'), under(r)]);
      expect(
        answers(
          (r) => random.parent(r)?.devpath,
          (r, subsystem) => paths(random.descendants(r, subsystem)),
        ),
      ).toEqual(
        answers(
          (r) => parentByWalk(random, r.devpath),
          (r, subsystem) => descendantsByFilter(random, r.devpath, subsystem),
        ),
      );
    }
  });

  it('finds the parents of deep paths in time linear in their length (a hostile agent picks them)', () => {
    // 500 disks, each 4,000 characters and 2,000 segments deep: walking up hashed 2,000 prefixes
    // of up to 4 KiB per disk (seconds); the whole tree is 2 MB of paths.
    const deep = new HostTree(
      Array.from({ length: 500 }, (_, i) => record(`/devices/x${i}${'/a'.repeat(1995)}/sd${i}`)),
    );
    const started = performance.now();
    const found = deep.devices().map((disk) => [deep.parent(disk), deep.descendants(disk).length]);
    const tookMs = performance.now() - started;
    expect(found).toEqual(deep.devices().map(() => [undefined, 0]));
    expect(tookMs).toBeLessThan(1_000);
  });
});
