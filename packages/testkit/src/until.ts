/**
 * Waits until `check` holds, polling every 10 ms, and says how long it took; past `timeoutMs` it
 * fails naming `what`. For conditions no event announces (a VM's view of its devices, an audit row).
 */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return Date.now() - started;
}
