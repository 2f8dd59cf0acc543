// @devgate/driver-usb: USB devices and USB authorization. Discovery and passthrough arrive with
// issue #5; until then the package only holds its place in the layout.
export const USB_DRIVER_ID = 'usb';
