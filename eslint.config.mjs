import eslint from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier/flat';
import nx from '@nx/eslint-plugin';
import { importX } from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

// The house (docs/adr/0013-package-boundaries-and-cycles.md): each project's package.json tags it with
// one `scope:` layer, and a layer may import only the layers listed for it. Production code first;
// tests (and their helpers under testing/) may also use what the package's devDependencies bring.
const CORE = ['scope:core'];
const LIBS = ['scope:core', 'scope:host', 'scope:driver', 'scope:backend', 'scope:client', 'scope:kit'];
const LAYERS = {
  'scope:core': CORE,
  'scope:host': CORE,
  // A driver never imports another driver: what drivers share lives in core.
  'scope:driver': CORE,
  'scope:client': CORE,
  'scope:backend': ['scope:core', 'scope:host'],
  // testkit (on host) and guest-lab (on backend-qemu).
  'scope:kit': ['scope:core', 'scope:host', 'scope:backend'],
  // What devgated and the CLI without it share: never an app.
  'scope:service': ['scope:core', 'scope:host', 'scope:driver', 'scope:backend', 'scope:client'],
  // No app imports another app (the CLI reaches devgated through its API only).
  'scope:app': [...LIBS, 'scope:service'],
  // Examples are written as a third party writes a driver: against core.
  'scope:example': CORE,
};
const TEST_LAYERS = {
  ...LAYERS,
  'scope:driver': ['scope:core', 'scope:host', 'scope:driver', 'scope:kit'],
  'scope:backend': ['scope:core', 'scope:host', 'scope:driver', 'scope:kit'],
  'scope:service': [...LAYERS['scope:service'], 'scope:kit'],
  'scope:example': ['scope:core', 'scope:host', 'scope:kit'],
  // The CLI's and the tray's tests run them against the real devgated: the app itself, in-process.
  'scope:app': [...LAYERS['scope:app'], 'scope:app'],
};
const TEST_FILES = ['**/*.spec.ts', '**/testing/**/*.ts'];
const boundaries = (layers) => [
  'error',
  {
    // Lazy imports are for start-up time (Node has no bundle to split): the same package may be
    // imported statically elsewhere.
    checkDynamicDependenciesExceptions: ['@devgate/*'],
    depConstraints: Object.entries(layers).map(([sourceTag, allowed]) => ({
      sourceTag,
      onlyDependOnLibsWithTags: allowed,
    })),
  },
];

export default tseslint.config(
  { ignores: ['**/dist/**', '**/out-tsc/**', '**/.nx/**', '**/*.cjs', '**/node_modules/**'] },
  eslint.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    // Decorator metadata keeps injected classes as values; without these options the rule
    // below would turn them into type-only imports and break tsyringe.
    languageOptions: { parserOptions: { emitDecoratorMetadata: true, experimentalDecorators: true } },
    rules: {
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['**/*.ts'],
    plugins: { '@nx': nx, 'import-x': importX },
    settings: {
      'import-x/extensions': ['.ts', '.js'],
      // `./x.js` is x.ts. Another package resolves to its dist/, which is not followed: a cycle
      // through two packages is a cycle of packages, which @nx/enforce-module-boundaries reports.
      'import-x/resolver-next': [createTypeScriptImportResolver({ noWarnOnMultipleProjects: true })],
      'import-x/ignore': ['[\\\\/](dist|out-tsc|node_modules)[\\\\/]'],
    },
    rules: {
      '@nx/enforce-module-boundaries': boundaries(LAYERS),
      'import-x/no-cycle': 'error',
    },
  },
  { files: TEST_FILES, rules: { '@nx/enforce-module-boundaries': boundaries(TEST_LAYERS) } },
  prettier,
);
