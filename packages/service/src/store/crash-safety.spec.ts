/**
 * Crash safety: a child process runs the real SqliteStateStore (testing/crash-writer.cjs), prints an
 * acknowledgement after each committed write, and is SIGKILLed at a random moment, 50 times on the
 * same file. After each kill the store is reopened as devgated would be at start: every acknowledged
 * write must be there, multi-statement transactions must be all-or-nothing, and SQLite's integrity
 * check must pass.
 *
 * SIGKILL tests atomicity and WAL recovery. It cannot test fsync (a killed process's writes are
 * already in the kernel's page cache); synchronous=FULL, checked in migrations.spec.ts, covers
 * power loss.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { SqliteStateStore } from './state-store.js';
import { TempDir } from './testing/temp-store.js';

const RUNS = 50;
const WRITER = path.join(__dirname, 'testing', 'crash-writer.cjs');

let tmp: TempDir;
beforeEach(() => (tmp = new TempDir()));
afterEach(() => tmp.remove());

/** A small seeded PRNG, so a failing run can be told apart (the seed is in the failure message). */
function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Run {
  readonly lines: string[];
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
}

/**
 * Starts the writer and SIGKILLs it: `early`, `delayMs` after spawn (while it opens the database);
 * otherwise `delayMs` after it has acknowledged `afterAcks` writes. Counting acknowledgements rather
 * than waiting a fixed time keeps the amount of work per run the same on a loaded machine; the
 * delay, and the race between the signal and the writer, put the kill anywhere in a write.
 */
function runAndKill(file: string, firstSeq: number, kill: { early: boolean; afterAcks: number; delayMs: number }) {
  return new Promise<Run>((resolve, reject) => {
    const child: ChildProcess = spawn(
      process.execPath,
      ['--conditions=@devgate/source', WRITER, file, String(firstSeq)],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    let scheduled = false;
    const schedule = () => {
      scheduled = true;
      setTimeout(() => child.kill('SIGKILL'), kill.delayMs);
    };
    if (kill.early) schedule();
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      // Lines so far, minus `ready`.
      if (!scheduled && stdout.split('\n').length - 2 >= kill.afterAcks) schedule();
    });
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (_code, signal) => {
      // A line without its newline was cut by the kill: not acknowledged.
      const lines = stdout.split('\n').slice(0, -1);
      resolve({ lines, signal, stderr });
    });
  });
}

it(`keeps every acknowledged write through ${RUNS} SIGKILLs at random moments`, async () => {
  const seed = Date.now() >>> 0;
  const random = mulberry32(seed);
  const file = tmp.file();
  const ackedAudit = new Set<number>();
  const ackedBegin = new Map<number, number>(); // journal id -> seq
  const ackedDone = new Set<number>();
  const ackedAssign = new Set<number>();
  let nextSeq = 0;
  let acks = 0;

  for (let run = 0; run < RUNS; run++) {
    // Now and then, kill while it starts and opens (or creates) the database: it is ready after ~150 ms.
    const early = random() < 0.1;
    const result = await runAndKill(file, nextSeq, {
      early,
      afterAcks: Math.floor(random() * 80),
      delayMs: early ? random() * 250 : random() * 3,
    });
    const where = `run ${run} (seed ${seed})`;
    if (result.signal !== 'SIGKILL') throw new Error(`${where}: writer ended by itself: ${result.stderr}`);
    for (const line of result.lines) {
      const [, kind, a, b] = line.split(' ');
      if (kind === 'audit') ackedAudit.add(Number(a));
      else if (kind === 'begin') ackedBegin.set(Number(a), Number(b));
      else if (kind === 'done') ackedDone.add(Number(a));
      else if (kind === 'assign') ackedAssign.add(Number(a));
      if (kind) acks++;
    }

    // Restart, as devgated does: open (recovering the WAL), then check.
    const store = new SqliteStateStore(file);
    try {
      const integrity = store.integrityCheck();
      if (integrity.join() !== 'ok') throw new Error(`${where}: integrity check: ${integrity.join('; ')}`);
      const seqs = (action: string) =>
        new Set(store.audit.query({ action, limit: 10_000 }).map((e) => (e.details as { seq: number }).seq));
      const auditSeqs = seqs('attach');
      const assignAuditSeqs = seqs('assign');
      const assignSeqs = new Set(store.assignments.list().map((a) => Number(a.options.seq)));

      for (const seq of ackedAudit) if (!auditSeqs.has(seq)) throw new Error(`${where}: lost audit ${seq}`);
      for (const [id, seq] of ackedBegin) {
        const entry = store.journal.entry(id);
        if (entry?.portId !== `1-${seq}`) throw new Error(`${where}: lost journal intent ${id}`);
        if (ackedDone.has(id) && entry.state !== 'done') throw new Error(`${where}: lost completion of ${id}`);
      }
      for (const seq of ackedAssign) if (!assignSeqs.has(seq)) throw new Error(`${where}: lost assignment ${seq}`);
      // The assignment and its audit record were one transaction: both or neither, never one.
      for (const seq of assignAuditSeqs)
        if (!assignSeqs.has(seq)) throw new Error(`${where}: audit of assignment ${seq} without the assignment`);
      if (assignSeqs.size !== assignAuditSeqs.size) throw new Error(`${where}: assignment without its audit record`);

      // Continue after everything committed, acknowledged or not.
      nextSeq = Math.max(nextSeq - 1, ...auditSeqs, ...assignSeqs) + 1;
    } finally {
      store.dispose();
    }
  }
  // The runs must have done real work for the test to mean anything (about 40 acks a run).
  expect(acks).toBeGreaterThan(RUNS * 20);
}, 300_000); // 50 writer processes: generous, as the machine may be busy; correctness is what is checked
