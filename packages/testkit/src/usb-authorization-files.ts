import { type RawDeviceRecord, sysname } from '@devgate/core';
import { RecordedDevice, isRecordedDevice } from '@devgate/host';

/**
 * The records with the authorization attributes a kernel would have (`authorized`, `remove`,
 * `authorized_default` on root hubs, `interface_authorized`), so a materialized tree has them as
 * regular files: USB authorization writes only files that exist, as sysfs has them.
 */
export function withUsbAuthorizationFiles(records: readonly RawDeviceRecord[]): RawDeviceRecord[] {
  return records.map((record) => {
    if (record.subsystem !== 'usb' || !isRecordedDevice(record)) return record;
    const extra: Record<string, string> = {};
    if (record.properties.DEVTYPE === 'usb_device') {
      extra.authorized = record.attribute('authorized') ?? '1';
      extra.remove = '';
      if (/^usb\d+$/.test(sysname(record.devpath))) {
        extra.authorized_default = record.attribute('authorized_default') ?? '1';
      }
    } else if (record.properties.DEVTYPE === 'usb_interface') {
      extra.interface_authorized = '1';
    } else {
      return record;
    }
    return new RecordedDevice({
      devpath: record.devpath,
      subsystem: record.subsystem,
      properties: record.properties,
      attributes: new Map([...record.attributes, ...Object.entries(extra)]),
      binaryAttributes: record.binaryAttributes,
      links: record.links,
      devlinks: record.devlinks,
    });
  });
}
