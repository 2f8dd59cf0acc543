// @devgate/driver-usb: the USB device class (discovery; passthrough and authorization to come).
export * from './usb-module.js';
export * from './usb-driver.js';
export * from './parse-usb-devices.js';
export * from './usb-ids.js';
export * from './usbguard/parse-usbguard-rules.js';
export * from './usbguard/evaluate-rules.js';
