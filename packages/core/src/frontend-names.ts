import { Errors } from './errors.js';
import { type AttachSpec } from './plugin-api.js';

/**
 * Qubes' frontend names, in Qubes' order: xvdi..xvdz, then xvdaa..xvdzz, then xvda..xvdh last
 * (reserved for system volumes in Qubes). Every connector names block attachments this way.
 */
export function* frontendNames(): Generator<string> {
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (const c of letters.slice(letters.indexOf('i'))) yield `xvd${c}`;
  for (const a of letters) for (const b of letters) yield `xvd${a}${b}`;
  for (const c of letters.slice(0, letters.indexOf('h') + 1)) yield `xvd${c}`;
}

/** The frontend name for a new block attachment: the one asked for, xvdd for a CD, else the first free. */
export function chooseFrontendDev(domain: string, spec: AttachSpec, used: ReadonlySet<string>): string {
  const asked = spec.params.frontendDev;
  if (typeof asked === 'string') {
    if (used.has(asked)) throw Errors.frontendDevInUse({ domain, dev: asked });
    return asked;
  }
  if (spec.params.devtype === 'cdrom' && !used.has('xvdd')) return 'xvdd';
  for (const name of frontendNames()) if (!used.has(name)) return name;
  throw Errors.noFreeFrontend({ domain, what: 'block frontend name' });
}
