// devgate-tray: desktop notifications and a tray menu, a client of devgated. Arrives with issue #6.
export const TRAY_NAME = 'devgate-tray';
