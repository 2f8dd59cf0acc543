/**
 * The moving half of the input proxy: the events of an allowed device's event nodes, from its backend
 * (a USB VM's agent) to the frontend's emulated input devices, filtered by what each node was allowed
 * as (forwarded-events.ts), in order. It ends when the proxy stops it (its device went, or was decided
 * again), when the backend stops sending, or when the frontend has no input path at all: audited. Events the frontend
 * cannot take for a while (it is stopped or paused, or has no tablet for a position) are dropped, as a
 * screen that is off drops what is typed, and the forward goes on: audited once per cause.
 */
import { type DeviceInfo, type DeviceManager, type InjectedInputEvent, errorCode, portLabel } from '@devgate/core';
import { concatMap, filter, map } from 'rxjs';
import { type QubesInputService } from './input-class.js';
import { inputCalls } from './input-policy.js';
import { forwardedEvents } from './forwarded-events.js';

export interface InputForwardEnd {
  readonly device: DeviceInfo;
  readonly frontend: string;
  readonly outcome: 'ok' | 'error';
  /** Why it ended, or `dropped: ...` for events the frontend did not take (the forward goes on). */
  readonly reason: string;
}

/**
 * Why the proxy stops a forward: its device went, or it was decided again (its event nodes changed,
 * or another device is in its port); both end it, audited. devgated stopping ends nothing it reports.
 */
export type ForwardStop = 'device-went' | 'decided-again' | 'proxy-stopped';

export interface InputForward {
  stop(why: ForwardStop): void;
}

/** Errors that mean the frontend can never take input: the forward ends. */
const FATAL = new Set(['DG_NO_CONNECTOR', 'DG_NO_INPUT_PATH']);

/**
 * The proxy's `forward` hook: starts moving the events of `nodes` (those the policy let go) to
 * `frontend`; `report` is told how it ended (once, whoever noticed first) and what it dropped.
 */
export function forwardInput(
  manager: DeviceManager,
  report: (end: InputForwardEnd) => void,
): (device: DeviceInfo, frontend: string, nodes: readonly string[]) => InputForward {
  return (device, frontend, nodes) => {
    let ended = false;
    const end = (outcome: InputForwardEnd['outcome'], reason: string) => {
      if (ended) return;
      ended = true;
      report({ device, frontend, outcome, reason });
    };
    let dropping: string | undefined;
    const inject = async (events: readonly InjectedInputEvent[]) => {
      try {
        await manager.injectInput(frontend, events);
        dropping = undefined;
      } catch (error) {
        const reason = `${errorCode(error)}: ${(error as Error).message}`;
        if (FATAL.has(errorCode(error))) throw error;
        if (reason !== dropping) report({ device, frontend, outcome: 'error', reason: `dropped: ${reason}` });
        dropping = reason;
      }
    };
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
          concatMap(inject),
        )
        .subscribe({
          error: (error: Error) => end('error', `${errorCode(error)}: ${error.message}`),
          complete: () => end('ok', `${device.port.backend} stopped sending its events`),
        });
      return {
        stop: (why) => {
          subscription.unsubscribe();
          // Maybe before the backend said its events ended: whoever noticed first is audited.
          if (why === 'device-went') end('ok', `${portLabel(device.port)} went`);
          if (why === 'decided-again') end('ok', `${portLabel(device.port)} changed: decided again`);
        },
      };
    } catch (error) {
      end('error', `${errorCode(error)}: ${(error as Error).message}`);
      return { stop: () => undefined };
    }
  };
}
