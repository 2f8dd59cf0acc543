// @devgate/driver-input: keyboards, mice, tablets and their policy. Not implemented yet; the
// package only holds its place in the layout.
export const INPUT_DRIVER_ID = 'input';
