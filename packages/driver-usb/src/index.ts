// @devgate/driver-usb: the USB device class (discovery, usb-host passthrough) and USBGuard-compatible
// host authorization.
export * from './usb-module.js';
export * from './usb-driver.js';
export * from './usb-attach.js';
export * from './parse-usb-devices.js';
export * from './parse-usb-descriptors.js';
export * from './usb-ids.js';
export * from './usbguard/parse-usbguard-rules.js';
export * from './usbguard/format-usbguard-rules.js';
export * from './usbguard/evaluate-rules.js';
export * from './usbguard-devices.js';
export * from './usb-authorization.js';
export * from './generate-policy.js';
