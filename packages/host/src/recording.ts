/**
 * One entry point for recorded hosts: picks the format from the file's content and name.
 *  - xz data (or a `.tar.xz`/`.txz` name): an lsblk sysfs tarball, extracted to a temp dir that
 *    lives until `dispose()`;
 *  - a `.umockdev` name, or text with umockdev-only lines (`A:`, `H:`, `L: name=target`): umockdev;
 *  - other text: a `udevadm info --export-db` dump.
 */
import * as path from 'node:path';
import { HostTree } from '@devgate/core';
import { loadSysfsTarball } from './load-sysfs-tarball.js';
import { parseUdevExportDb } from './parse-udev-export-db.js';
import { parseUmockdev } from './parse-umockdev.js';
import { readRecordingFile, unreadable } from './recorded-device.js';

export type RecordingFormat = 'umockdev' | 'udev-export-db' | 'sysfs-tarball';

export interface Recording {
  readonly tree: HostTree;
  readonly format: RecordingFormat;
  /** Removes what loading created (the extracted tarball); safe to call twice. */
  dispose(): void;
}

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const UMOCKDEV_ONLY_LINE = /^[AHL]: [^=\n]+=/m;

export function loadRecording(file: string): Recording {
  const name = path.basename(file).toLowerCase();
  if (name.endsWith('.tar.xz') || name.endsWith('.txz')) return tarball(file);
  const bytes = readRecordingFile(file);
  if (bytes.subarray(0, XZ_MAGIC.length).equals(XZ_MAGIC)) return tarball(file);

  const text = bytes.toString('utf8');
  const format = detectTextFormat(text, name);
  const records = format === 'umockdev' ? parseUmockdev(text, file) : parseUdevExportDb(text, file);
  if (records.length === 0) throw unreadable(file, 'no device records');
  return { tree: new HostTree(records), format, dispose: () => {} };
}

/** umockdev or export-db, for text already known not to be a tarball. */
export function detectTextFormat(text: string, fileName = ''): 'umockdev' | 'udev-export-db' {
  if (fileName.endsWith('.umockdev')) return 'umockdev';
  return UMOCKDEV_ONLY_LINE.test(text) ? 'umockdev' : 'udev-export-db';
}

function tarball(file: string): Recording {
  const loaded = loadSysfsTarball(file);
  return { tree: loaded.tree, format: 'sysfs-tarball', dispose: () => loaded.dispose() };
}
