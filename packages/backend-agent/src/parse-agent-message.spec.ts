import * as fs from 'node:fs';
import { of } from 'rxjs';
import { type DeviceSource, HostTree, Kernel, type RawDeviceRecord, recordOf } from '@devgate/core';
import { RecordedHostSource } from '@devgate/host';
import { blockModule } from '@devgate/driver-block';
import { usbModule } from '@devgate/driver-usb';
import { recordedFixturesDir } from '@devgate/testkit';
import { AgentViolation, hostTreeOf, parseAgentMessage } from './parse-agent-message';
import {
  DEFAULT_LIMITS,
  MAX_DEVPATH_CHARS,
  MAX_DEVPATH_SEGMENTS,
  type TreeMessage,
  WIRE_ATTRIBUTES,
  WIRE_ENTRIES,
} from './protocol';
import { treeMessageOf } from './wire-tree';

const RECORDINGS = fs
  .readdirSync(recordedFixturesDir())
  .filter((name) => name.endsWith('.txt') || name.endsWith('.umockdev'))
  .map((name) => `${recordedFixturesDir()}/${name}`);

function recorded(file: string): HostTree {
  return new RecordedHostSource(file, 'x').snapshot();
}

describe('parseAgentMessage', () => {
  it.each(RECORDINGS.map((f) => [f.slice(f.lastIndexOf('/') + 1), f]))(
    'takes the tree of %s as the agent sends it, and gives the drivers the same records',
    (_name, file) => {
      const tree = recorded(file);
      const message = parseAgentMessage(JSON.stringify(treeMessageOf(tree, 1))) as TreeMessage;
      expect(message.type).toBe('tree');
      const rebuilt = hostTreeOf(message.records, message.usage);
      expect(rebuilt.size).toBe(tree.size);
      for (const record of tree.devices()) {
        const copy = rebuilt.device(record.devpath)!;
        expect(copy.properties).toEqual({ ...record.properties });
        for (const name of WIRE_ATTRIBUTES[record.subsystem] ?? [])
          expect(copy.attribute(name)).toBe(record.attribute(name));
      }
    },
  );

  it('keeps a property named __proto__ a plain name', () => {
    const line = `{"v":1,"type":"tree","seq":1,"records":[{"devpath":"/devices/x","subsystem":"block","properties":{"__proto__":"polluted","DEVNAME":"/dev/x"}}],"usage":{"mounted":[],"swaps":[]}}`;
    const message = parseAgentMessage(line) as TreeMessage;
    const tree = hostTreeOf(message.records, message.usage);
    const record = tree.device('/devices/x')!;
    expect(Object.getPrototypeOf(record.properties)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(record.properties, '__proto__')?.value).toBe('polluted');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('refuses, with an AgentViolation and nothing else, whatever a fuzzer makes of valid messages', () => {
    const seeds = [
      JSON.stringify(treeMessageOf(recorded(RECORDINGS[0]), 1)).slice(0, 20_000),
      '{"v":1,"type":"hello","agent":"devgate-agent 0.1.0","exports":["nbd","usbredir"],"ports":["org.devgate.export.0"]}',
      '{"v":1,"type":"reply","id":3,"ok":false,"error":{"code":"EXPORT_FAILED","message":"no such device"}}',
      '{"v":1,"type":"export-ended","export":"e0a1b2c3","reason":"frontend left","clean":true}',
    ];
    let random = 12345;
    const next = () => (random = (random * 1103515245 + 12345) % 2 ** 31);
    const replacements = [
      '"',
      '{',
      '}',
      '[',
      ']',
      ',',
      ':',
      '0',
      '-1',
      'null',
      'true',
      '"__proto__"',
      '\\u0000',
      '1e999',
      '',
    ];
    let refused = 0;
    for (let i = 0; i < 3000; i++) {
      const seed = seeds[i % seeds.length];
      let text = seed;
      for (let m = 0; m <= next() % 4; m++) {
        const at = next() % text.length;
        const cut = next() % 8;
        text = text.slice(0, at) + replacements[next() % replacements.length] + text.slice(at + cut);
      }
      try {
        parseAgentMessage(text);
      } catch (error) {
        expect(error).toBeInstanceOf(AgentViolation);
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(1000);
  });

  it('carries the dm devices held open and the images excluded that an agent names, and refuses anything else there', () => {
    const records = [
      { devpath: '/devices/virtual/block/dm-0', subsystem: 'block', properties: { DEVNAME: '/dev/dm-0' } },
    ];
    const sent = new HostTree([recordOf(records[0].devpath, 'block', records[0].properties)], {
      mounted: new Set(),
      swaps: new Set(),
      heldOpen: new Set(['254:0']),
      excludedLoops: new Set(['7:2']),
    });
    const message = parseAgentMessage(JSON.stringify(treeMessageOf(sent, 1))) as TreeMessage;
    const { usage } = hostTreeOf(message.records, message.usage);
    expect([...usage.heldOpen!]).toEqual(['254:0']);
    expect([...usage.excludedLoops!]).toEqual(['7:2']);
    // Not named: not known (the hand-over asks again), rather than none.
    const without = parseAgentMessage(JSON.stringify(treeMessageOf(new HostTree(sent.devices()), 2))) as TreeMessage;
    expect(hostTreeOf(without.records, without.usage).usage).toEqual({ mounted: new Set(), swaps: new Set() });
    const tree = (field: string, value: unknown) =>
      JSON.stringify({ v: 1, type: 'tree', seq: 1, records, usage: { mounted: [], swaps: [], [field]: value } });
    for (const field of ['heldOpen', 'excludedLoops']) {
      expect(() => parseAgentMessage(tree(field, ['/dev/dm-0']))).toThrow(`tree.usage.${field}[0]: malformed`);
      expect(() => parseAgentMessage(tree(field, '254:0'))).toThrow(AgentViolation);
      expect(() =>
        parseAgentMessage(
          tree(
            field,
            Array.from({ length: DEFAULT_LIMITS.maxUsageEntries + 1 }, () => '254:0'),
          ),
        ),
      ).toThrow(AgentViolation);
    }
  });

  it('refuses bounds crossed: records, properties, value length, device paths, line length per type', () => {
    const record = (i: number) => ({ devpath: `/devices/d${i}`, subsystem: 'usb', properties: {} });
    const tree = (records: unknown[]) =>
      JSON.stringify({ v: 1, type: 'tree', seq: 1, records, usage: { mounted: [], swaps: [] } });
    const limits = { ...DEFAULT_LIMITS, maxRecords: 10 };
    expect(() => parseAgentMessage(tree(Array.from({ length: 11 }, (_, i) => record(i))), limits)).toThrow(
      /more than 10/,
    );
    const many = Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`K${i}`, 'v']));
    expect(() => parseAgentMessage(tree([{ ...record(0), properties: many }]))).toThrow(/more than 256/);
    expect(() => parseAgentMessage(tree([{ ...record(0), properties: { A: 'x'.repeat(17_000) } }]))).toThrow(
      /longer than/,
    );
    // Device paths: as long and as deep as the bounds, and no further.
    const at = (devpath: string) => tree([{ ...record(0), devpath }]);
    const deepest = '/devices' + '/1-1'.repeat(MAX_DEVPATH_SEGMENTS - 1);
    const longest = '/devices/' + 'x'.repeat(MAX_DEVPATH_CHARS - '/devices/'.length);
    expect(parseAgentMessage(at(deepest))).toMatchObject({ records: [{ devpath: deepest }] });
    expect(parseAgentMessage(at(longest))).toMatchObject({ records: [{ devpath: longest }] });
    expect(() => parseAgentMessage(at(deepest + '/a'))).toThrow(/devpath: more than 64 segments/);
    expect(() => parseAgentMessage(at(longest + 'x'))).toThrow(/devpath: longer than 1024/);
    const bigReply = JSON.stringify({
      v: 1,
      type: 'reply',
      id: 1,
      ok: false,
      error: { code: 'X', message: 'm' },
      pad: 'x'.repeat(20_000),
    });
    expect(() => parseAgentMessage(bigReply)).toThrow(AgentViolation);
  });
});

describe('WIRE_ATTRIBUTES', () => {
  it("holds every attribute and listing devgate's drivers read, for the subsystem they read it of", () => {
    const read = new Map<string, Set<string>>();
    const note = (subsystem: string, name: string) => {
      const set = read.get(subsystem) ?? new Set<string>();
      set.add(name);
      read.set(subsystem, set);
    };
    for (const file of RECORDINGS) {
      const tree = recorded(file);
      const spied = new HostTree(
        tree.devices().map((record): RawDeviceRecord => ({
          devpath: record.devpath,
          subsystem: record.subsystem,
          properties: record.properties,
          attribute: (name) => {
            note(record.subsystem, name);
            return record.attribute(name);
          },
          entries: (name) => {
            note(record.subsystem, `entries:${name}`);
            return record.entries?.(name);
          },
        })),
        tree.usage,
      );
      const source: DeviceSource = { id: file, backend: 'x', hotplug: 'static', trees$: of(spied), dispose() {} };
      const kernel = new Kernel().load(blockModule, usbModule);
      kernel.registerSource(source);
      kernel.start();
      kernel.dispose();
    }
    expect(read.size).toBeGreaterThan(0);
    const missing: string[] = [];
    for (const [subsystem, names] of read) {
      for (const name of names) {
        const listed = name.startsWith('entries:')
          ? (WIRE_ENTRIES[subsystem] ?? []).includes(name.slice('entries:'.length))
          : (WIRE_ATTRIBUTES[subsystem] ?? []).includes(name);
        if (!listed) missing.push(`${subsystem}: ${name}`);
      }
    }
    expect(missing).toEqual([]);
  });
});
