// A lower bound for any Node listing of block devices: Node starts, reads what a block listing must
// read (each device's uevent, its udev database entry, size, ro, removable, holders and a loop
// device's backing file) with the fewest system calls it can, and exits. No parsing beyond finding
// the udev file's name, no objects per device, nothing printed. Run by bench/cold-list.cjs.
'use strict';
const fs = require('node:fs');

const buffer = Buffer.allocUnsafe(65536);
function read(file) {
  let fd;
  try {
    fd = fs.openSync(file, 'r');
  } catch {
    return '';
  }
  try {
    return buffer.latin1Slice(0, fs.readSync(fd, buffer, 0, buffer.length, 0));
  } finally {
    fs.closeSync(fd);
  }
}

let devices = 0;
for (const name of fs.readdirSync('/sys/class/block')) {
  const dir = `/sys/class/block/${name}`;
  const uevent = read(`${dir}/uevent`);
  const numbers = /MAJOR=(\d+)\nMINOR=(\d+)/.exec(uevent);
  if (numbers) read(`/run/udev/data/b${numbers[1]}:${numbers[2]}`);
  read(`${dir}/size`);
  read(`${dir}/ro`);
  read(`${dir}/removable`);
  fs.readdirSync(`${dir}/holders`);
  if (name.startsWith('loop') && !name.includes('p')) read(`${dir}/loop/backing_file`);
  devices++;
}
if (process.argv[2] === '--count') process.stdout.write(`${devices}\n`);
