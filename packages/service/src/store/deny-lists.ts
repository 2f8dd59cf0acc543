/** The deny_list table: Qubes' devices_denied, one row per pattern of device interfaces per frontend. */
import { type DenyList, type DomainName, type InterfaceCode } from '@devgate/core';
import { type StoreConnection } from './connection.js';
import * as check from './validate.js';

export class DenyLists {
  constructor(private readonly connection: StoreConnection) {}

  get(frontend: DomainName): DenyList {
    const name = check.domainName(frontend);
    return this.connection.guard(() => ({
      frontend: name,
      patterns: this.connection
        .stmt('SELECT pattern FROM deny_list WHERE frontend = ? ORDER BY pattern')
        .pluck()
        .all(name) as string[],
    }));
  }

  /** Every frontend's list that has a pattern, by frontend. */
  all(): DenyList[] {
    const rows = this.connection.guard(
      () =>
        this.connection.stmt('SELECT frontend, pattern FROM deny_list ORDER BY frontend, pattern').all() as DenyRow[],
    );
    const lists = new Map<string, InterfaceCode[]>();
    for (const row of rows) lists.set(row.frontend, [...(lists.get(row.frontend) ?? []), row.pattern]);
    return [...lists].map(([frontend, patterns]) => ({ frontend, patterns }));
  }

  add(frontend: DomainName, patterns: readonly string[]): DenyList {
    const name = check.domainName(frontend);
    const codes = patterns.map(check.interfacePattern);
    this.connection.transaction(() => {
      const insert = this.connection.stmt(
        'INSERT INTO deny_list (frontend, pattern) VALUES (?, ?) ON CONFLICT DO NOTHING',
      );
      for (const code of codes) insert.run(name, code);
    });
    return this.get(name);
  }

  remove(frontend: DomainName, patterns: readonly string[]): DenyList {
    const name = check.domainName(frontend);
    const codes = patterns.map(check.interfacePattern);
    this.connection.transaction(() => {
      const remove = this.connection.stmt('DELETE FROM deny_list WHERE frontend = ? AND pattern = ?');
      for (const code of codes) remove.run(name, code);
    });
    return this.get(name);
  }

  /** Replaces the whole list, as setting Qubes' `devices_denied` property does; `[]` clears it. */
  set(frontend: DomainName, patterns: readonly string[]): DenyList {
    const name = check.domainName(frontend);
    const codes = patterns.map(check.interfacePattern);
    this.connection.transaction(() => {
      this.connection.stmt('DELETE FROM deny_list WHERE frontend = ?').run(name);
      const insert = this.connection.stmt(
        'INSERT INTO deny_list (frontend, pattern) VALUES (?, ?) ON CONFLICT DO NOTHING',
      );
      for (const code of codes) insert.run(name, code);
    });
    return this.get(name);
  }
}

interface DenyRow {
  frontend: string;
  pattern: string;
}
