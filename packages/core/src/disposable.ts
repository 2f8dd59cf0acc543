/** Everything that registers returns a Disposable; teardown mirrors setup. */
export interface Disposable {
  dispose(): void;
}

export const Disposable = {
  create(fn: () => void): Disposable {
    let done = false;
    return {
      dispose() {
        if (done) return;
        done = true;
        fn();
      },
    };
  },
  NONE: Object.freeze({ dispose() {} }) as Disposable,
};

/** Disposes its members in reverse order; one failing member does not stop the others. */
export class DisposableCollection implements Disposable {
  private readonly members: Disposable[] = [];

  push(...items: Disposable[]): Disposable {
    this.members.push(...items);
    return Disposable.create(() => {
      for (const item of items) {
        const i = this.members.indexOf(item);
        if (i >= 0) this.members.splice(i, 1);
      }
    });
  }

  get disposed(): boolean {
    return this.members.length === 0;
  }

  dispose(): void {
    const errors: unknown[] = [];
    while (this.members.length > 0) {
      const item = this.members.pop()!;
      try {
        item.dispose();
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, 'several disposables failed');
  }
}
