// The peer of devgate's block attachments: the QMP commands a hand-written script would send for the
// same usb-storage attachment, on a connection it keeps open.
'use strict';
const { time } = require('./timing.cjs');

/** The raw QMP of one usb-storage attachment and its detachment, on an open connection. */
async function rawQmpRound(qmp, loop) {
  const attach = await time(async () => {
    await qmp.execute('blockdev-add', {
      driver: 'host_device',
      'node-name': 'raw',
      filename: loop,
      'read-only': false,
    });
    await qmp.execute('device_add', {
      driver: 'usb-storage',
      id: 'rawdev',
      drive: 'raw',
      bus: 'xhci.0',
      removable: true,
    });
  });
  const detach = await time(async () => {
    const deleted = qmp.waitForEvent('DEVICE_DELETED', (e) => e.data?.device === 'rawdev', 5000);
    await qmp.execute('device_del', { id: 'rawdev' });
    await deleted;
    await qmp.execute('blockdev-del', { 'node-name': 'raw' });
  });
  return { attach, detach };
}

module.exports = { rawQmpRound };
