import * as fs from 'node:fs';
import * as path from 'node:path';
import { recordedFixture } from '@devgate/testkit';
import { runCaptured } from './test-io';

// README.md says which device classes devgate discovers. Each class it names must really be listed
// from a recording of hardware that has such devices, so the sentence stays true as drivers land.
const README = path.join(__dirname, '..', '..', '..', 'README.md');

/** A recording that holds devices of each class (real machines, see the fixtures' SOURCES.md). */
const RECORDING_WITH: Record<string, string> = {
  block: 'KIOXIA_TransMemory.txt',
  usb: 'KIOXIA_TransMemory.txt',
  input: 'synaptics-touchpad.umockdev',
  pci: 'LENOVO_T420.txt',
};

function claimedClasses(): string[] {
  const text = fs.readFileSync(README, 'utf8').replace(/\s+/g, ' ');
  const sentence = /devgate discovers (.+?) devices/.exec(text);
  expect(sentence).not.toBeNull();
  return sentence![1]
    .split(/,\s*|\s+and\s+/)
    .map((word) => word.trim().toLowerCase())
    .filter(Boolean);
}

it('README names as discovered only classes devgate lists', async () => {
  const claimed = claimedClasses();
  expect(claimed).toEqual(expect.arrayContaining(['block', 'usb']));
  for (const devclass of claimed) {
    expect([devclass, devclass in RECORDING_WITH]).toEqual([devclass, true]);
    const { code, out } = await runCaptured('devgate', [
      'list',
      '--all',
      '--json',
      '--recording',
      recordedFixture(RECORDING_WITH[devclass]),
    ]);
    expect(code).toBe(0);
    const listed = (JSON.parse(out) as { class: string }[]).filter((d) => d.class === devclass);
    expect([devclass, listed.length > 0]).toEqual([devclass, true]);
  }
});
