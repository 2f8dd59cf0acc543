/**
 * The moving half of the input proxy: the events of an allowed device's event nodes, from its backend
 * (a USB VM's agent) to the frontend's emulated input devices, filtered by what each node was allowed
 * as (forwarded-events.ts), in order. It ends when the device goes (the proxy disposes it), when the
 * backend stops sending, or when the frontend cannot take them (stopped, or no input path): audited.
 */
import { type DeviceInfo, type DeviceManager, type Disposable, errorCode } from '@devgate/core';
import { concatMap, filter, map } from 'rxjs';
import { type QubesInputService } from './input-class.js';
import { inputCalls } from './input-policy.js';
import { forwardedEvents } from './forwarded-events.js';

export interface InputForwardEnd {
  readonly device: DeviceInfo;
  readonly frontend: string;
  readonly outcome: 'ok' | 'error';
  readonly reason: string;
}

/**
 * The proxy's `forward` hook: starts moving the events of `nodes` (those the policy let go) to
 * `frontend`; `ended` is told how it ended, unless it was disposed.
 */
export function forwardInput(
  manager: DeviceManager,
  ended: (end: InputForwardEnd) => void,
): (device: DeviceInfo, frontend: string, nodes: readonly string[]) => Disposable {
  return (device, frontend, nodes) => {
    const end = (outcome: InputForwardEnd['outcome'], reason: string) => ended({ device, frontend, outcome, reason });
    const allowed = new Map<string, QubesInputService>();
    for (const call of inputCalls(device)) {
      for (const node of call.events) if (nodes.includes(node)) allowed.set(node, call.service);
    }
    try {
      const subscription = manager
        .inputEvents(device, [...allowed.keys()])
        .pipe(
          map((batch) => forwardedEvents(batch, allowed)),
          filter((events) => events.length > 0),
          concatMap((events) => manager.injectInput(frontend, events)),
        )
        .subscribe({
          error: (error: Error) => end('error', `${errorCode(error)}: ${error.message}`),
          complete: () => end('ok', `${device.port.backend} stopped sending its events`),
        });
      return { dispose: () => subscription.unsubscribe() };
    } catch (error) {
      end('error', `${errorCode(error)}: ${(error as Error).message}`);
      return { dispose: () => undefined };
    }
  };
}
