import { spawn } from 'node:child_process';

/**
 * Unix socket files whose listener was SIGKILLed, as a crashed devgated leaves them: the files stay,
 * and connecting to them is refused (ECONNREFUSED).
 */
export async function leaveSocketsOfKilledProcess(files: readonly string[]): Promise<void> {
  const listen = files.map((f) => `require('net').createServer().listen(${JSON.stringify(f)}, ready)`).join(';');
  const script = `let n = ${files.length}; const ready = () => --n || console.log('listening'); ${listen}`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('listening') && resolve());
      child.once('exit', (code) => reject(new Error(`the listener exited early (${code})`)));
    });
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}
