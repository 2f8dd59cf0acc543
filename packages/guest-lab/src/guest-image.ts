/**
 * The guest image: a kernel and an initramfs, built once from this machine's own packages and
 * cached. The kernel is Debian's `linux-image-amd64` (the host's running kernel may be anything, and
 * have no modules on disk); its uncompressed ELF `vmlinux` is extracted from `/boot/vmlinuz-*` so
 * QEMU boots it through its PVH entry, about twice as fast as the bzImage under TCG. The initramfs
 * is busybox-static, the few modules a 9p root needs, and the lab's stage 1, stage 2 and agent
 * (`guest/` in this package).
 *
 * Cache layout (`$DEVGATE_LAB_CACHE`, else /var/cache/devgate-lab as root, else ~/.cache/devgate-lab):
 *   <cache>/<kernel version>/vmlinux                   + vmlinux.source (which vmlinuz it came from)
 *   <cache>/<kernel version>/initramfs-<hash>.cpio.gz  hash of everything that goes into it
 * Files are written to a temporary name and renamed into place: processes preparing at the same
 * time each write their own copy and the last rename wins with identical content, so no lock is
 * needed and a reader never sees half a file.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { GuestErrors } from './guest-errors.js';
import { type NewcEntry, newcArchive } from './newc.js';

export interface GuestImage {
  readonly kernelVersion: string;
  /** What QEMU's -kernel gets: the extracted vmlinux, or the bzImage if extraction failed. */
  readonly kernel: string;
  readonly initrd: string;
  /** The modules of that kernel; the guest sees them at the same path. */
  readonly modulesDir: string;
}

export interface GuestImageOptions {
  readonly cacheDir?: string;
  /** A kernel version (`6.1.0-57-amd64`); default `$DEVGATE_LAB_KERNEL`, else the newest one installed. */
  readonly kernelVersion?: string;
  readonly bootDir?: string;
  readonly modulesRoot?: string;
  readonly busybox?: string;
}

/** Bumped when the layout of the initramfs changes in a way the hashed inputs do not show. */
const IMAGE_FORMAT = 1;
/** What stage 1 needs before the root is mounted; everything else loads from the root in stage 2. */
const INITRAMFS_MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'overlay'];
const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b, 0x08]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

/** The directory holding stage 1, stage 2 and the agent (beside src/ and dist/): looked up when used. */
function guestFilesDir(): string {
  return path.join(__dirname, '..', 'guest');
}

export function defaultLabCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env['DEVGATE_LAB_CACHE']) return env['DEVGATE_LAB_CACHE'];
  if (process.getuid?.() === 0) return '/var/cache/devgate-lab';
  return path.join(env['XDG_CACHE_HOME'] || path.join(os.homedir(), '.cache'), 'devgate-lab');
}

export interface GuestKernel {
  readonly version: string;
  readonly vmlinuz: string;
  readonly modulesDir: string;
}

/** The kernel to boot: the one asked for, else the newest `vmlinuz-*` whose modules are installed. */
export function findGuestKernel(options: GuestImageOptions = {}): GuestKernel {
  const bootDir = options.bootDir ?? '/boot';
  const modulesRoot = options.modulesRoot ?? '/lib/modules';
  const wanted = options.kernelVersion ?? process.env['DEVGATE_LAB_KERNEL'];
  const candidates = (fs.existsSync(bootDir) ? fs.readdirSync(bootDir) : [])
    .filter((f) => f.startsWith('vmlinuz-'))
    .map((f) => f.slice('vmlinuz-'.length))
    .filter((v) => fs.existsSync(path.join(modulesRoot, v, 'modules.dep')))
    .filter((v) => !wanted || v === wanted)
    .sort(compareVersions);
  const version = candidates.at(-1);
  if (!version) {
    throw GuestErrors.noGuestKernel({
      where: bootDir,
      reason: wanted
        ? `no vmlinuz-${wanted} with modules in ${modulesRoot}/${wanted}`
        : `no vmlinuz-* with modules in ${modulesRoot}`,
    });
  }
  return { version, vmlinuz: path.join(bootDir, `vmlinuz-${version}`), modulesDir: path.join(modulesRoot, version) };
}

/** Builds (or finds in the cache) the kernel and initramfs for lab guests. */
export async function prepareGuestImage(options: GuestImageOptions = {}): Promise<GuestImage> {
  const kernel = findGuestKernel(options);
  const dir = path.join(options.cacheDir ?? defaultLabCacheDir(), kernel.version);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const vmlinux = await cachedVmlinux(kernel, dir);
  const initrd = cachedInitramfs(kernel, dir, options.busybox ?? '/bin/busybox');
  return { kernelVersion: kernel.version, kernel: vmlinux, initrd, modulesDir: kernel.modulesDir };
}

// -- the kernel

async function cachedVmlinux(kernel: GuestKernel, dir: string): Promise<string> {
  const stat = fs.statSync(kernel.vmlinuz);
  const source = `${kernel.vmlinuz} ${stat.size} ${stat.mtimeMs}\n`;
  const target = path.join(dir, 'vmlinux');
  const sourceFile = path.join(dir, 'vmlinux.source');
  if (fs.existsSync(target) && readOr(sourceFile) === source) return target;
  const temp = `${target}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    if (!(await extractVmlinux(kernel.vmlinuz, temp))) {
      // A compression we cannot take apart: QEMU boots the bzImage itself, only slower.
      fs.rmSync(temp, { force: true });
      return kernel.vmlinuz;
    }
    fs.renameSync(temp, target);
    writeAtomically(sourceFile, source);
    return target;
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw GuestErrors.imageFailed({ reason: `extracting vmlinux from ${kernel.vmlinuz}: ${(error as Error).message}` });
  }
}

/**
 * Writes the uncompressed ELF kernel inside a bzImage to `dest`: the payload is found by its
 * compression's magic (xz, else gzip) and decompressed from there; a false match is recognised by
 * its output not being ELF, and the next one is tried. False when none works.
 */
export async function extractVmlinux(vmlinuz: string, dest: string): Promise<boolean> {
  const image = fs.readFileSync(vmlinuz);
  for (let at = image.indexOf(XZ_MAGIC); at >= 0; at = image.indexOf(XZ_MAGIC, at + 1)) {
    if ((await xzDecompress(image.subarray(at), dest)) && isElf(dest)) return true;
  }
  for (let at = image.indexOf(GZIP_MAGIC); at >= 0; at = image.indexOf(GZIP_MAGIC, at + 1)) {
    try {
      const data = gunzipSync(image.subarray(at));
      if (data.subarray(0, 4).equals(ELF_MAGIC)) {
        fs.writeFileSync(dest, data);
        return true;
      }
    } catch {
      // not a gzip stream after all
    }
  }
  return false;
}

function xzDecompress(data: Buffer, dest: string): Promise<boolean> {
  return new Promise((resolve) => {
    const out = fs.openSync(dest, 'w');
    // --single-stream: the bytes after the payload are not xz and must be ignored, not refused.
    const child = spawn('xz', ['-dc', '--single-stream'], { stdio: ['pipe', out, 'ignore'] });
    child.on('error', () => resolve(false));
    child.on('close', (code) => {
      fs.closeSync(out);
      resolve(code === 0);
    });
    child.stdin!.on('error', () => undefined);
    child.stdin!.end(data);
  });
}

function isElf(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(4);
    fs.readSync(fd, head, 0, 4, 0);
    return head.equals(ELF_MAGIC);
  } finally {
    fs.closeSync(fd);
  }
}

// -- the initramfs

function cachedInitramfs(kernel: GuestKernel, dir: string, busybox: string): string {
  if (!fs.existsSync(busybox)) {
    throw GuestErrors.imageFailed({ reason: `${busybox} is missing (apt-get install busybox-static)` });
  }
  const modules = initramfsModules(kernel);
  const guestFiles = ['init', 'stage2', 'agent.cjs'].map((name) => ({
    name,
    data: fs.readFileSync(path.join(guestFilesDir(), name)),
  }));
  const busyboxData = fs.readFileSync(busybox);
  const hash = createHash('sha256');
  hash.update(`format ${IMAGE_FORMAT}\n`);
  for (const file of guestFiles) hash.update(`${file.name}\n`).update(file.data);
  hash.update(busyboxData);
  for (const module of modules) {
    const stat = fs.statSync(module);
    hash.update(`${module} ${stat.size} ${stat.mtimeMs}\n`);
  }
  const target = path.join(dir, `initramfs-${hash.digest('hex').slice(0, 16)}.cpio.gz`);
  if (fs.existsSync(target)) return target;

  const names = modules.map((m, i) => `${String(i + 1).padStart(2, '0')}-${moduleBaseName(m)}.ko`);
  const entries: NewcEntry[] = [
    ...['bin', 'dev', 'proc', 'sys', 'modules'].map((d) => ({ type: 'dir' as const, path: d })),
    { type: 'char', path: 'dev/console', major: 5, minor: 1 },
    { type: 'file', path: 'bin/busybox', data: busyboxData, mode: 0o755 },
    ...guestFiles.map((f) => ({
      type: 'file' as const,
      path: f.name,
      data: f.data,
      mode: f.name.endsWith('.cjs') ? 0o644 : 0o755,
    })),
    { type: 'file', path: 'modules/order', data: Buffer.from(names.join('\n') + '\n') },
    ...modules.map((m, i) => ({ type: 'file' as const, path: `modules/${names[i]}`, data: readModule(m) })),
  ];
  writeAtomically(target, gzipSync(newcArchive(entries), { level: 6 }));
  return target;
}

/** The module files stage 1 loads, dependencies first, each once (`modprobe --show-depends`). */
function initramfsModules(kernel: GuestKernel): string[] {
  const files: string[] = [];
  for (const module of INITRAMFS_MODULES) {
    let text: string;
    try {
      // modprobe reads <base>/lib/modules/<version>.
      const base = kernel.modulesDir.replace(/\/lib\/modules\/[^/]+\/?$/, '') || '/';
      text = execFileSync('modprobe', ['-d', base, '-S', kernel.version, '--show-depends', module], {
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (error) {
      const stderr = String((error as { stderr?: string }).stderr ?? (error as Error).message).trim();
      throw GuestErrors.imageFailed({ reason: `modprobe --show-depends ${module}: ${stderr} (is kmod installed?)` });
    }
    for (const line of text.split('\n')) {
      const match = /^insmod (\S+)/.exec(line.trim()); // "builtin NAME" lines need nothing
      if (match && !files.includes(match[1])) files.push(match[1]);
    }
  }
  return files;
}

function moduleBaseName(file: string): string {
  return path.basename(file).replace(/\.ko(\.(xz|zst|gz))?$/, '');
}

/** busybox's insmod takes plain modules only; Debian compresses them in newer releases. */
function readModule(file: string): Buffer {
  if (file.endsWith('.ko')) return fs.readFileSync(file);
  if (file.endsWith('.ko.gz')) return gunzipSync(fs.readFileSync(file));
  const tool = file.endsWith('.ko.xz') ? 'xz' : file.endsWith('.ko.zst') ? 'zstd' : undefined;
  if (!tool) throw GuestErrors.imageFailed({ reason: `unknown module format: ${file}` });
  return execFileSync(tool, ['-dc', file], { maxBuffer: 64 * 1024 * 1024 });
}

// -- helpers

function writeAtomically(file: string, data: string | Buffer): void {
  const temp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    fs.writeFileSync(temp, data);
    fs.renameSync(temp, file);
  } catch (error) {
    fs.rmSync(temp, { force: true });
    throw error;
  }
}

function readOr(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

/** Orders kernel versions like `6.1.0-9-amd64` < `6.1.0-57-amd64` (numbers compared as numbers). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    if (x === y) continue;
    const nx = Number(x);
    const ny = Number(y);
    if (x !== '' && y !== '' && !Number.isNaN(nx) && !Number.isNaN(ny)) return nx - ny;
    return x < y ? -1 : 1;
  }
  return 0;
}
