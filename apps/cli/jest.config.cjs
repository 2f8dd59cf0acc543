const preset = require('../../jest.preset.cjs');
module.exports = {
  ...preset,
  displayName: require('./package.json').name,
  // In-process commands write devgated's state: tests keep it in a directory of their own.
  setupFilesAfterEnv: ['<rootDir>/jest.state-dir.cjs'],
};
