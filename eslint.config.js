// @ts-check
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

/**
 * Code rules: typescript-eslint's recommended type-aware set, and no floating promises (a dropped
 * rejection is a lost error). How modules may import each other (no cycles, type imports
 * included; api and worker apart) is dependency-cruiser's job: .dependency-cruiser.cjs.
 */
export default tseslint.config(
  { ignores: ['dist/**', '.test-dist/**', 'bench/results/**', 'node_modules/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: globals.node,
      parserOptions: {
        projectService: { allowDefaultProject: ['*.js', '*.ts', 'bench/lib/*.mjs'] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Handlers passed to Hono, BullMQ and vitest are async by contract, awaiting or not.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // The operation routes answer through jsonResponse() (src/api/respond.ts), which writes its
    // headers as a plain object and bypasses Hono's header merge: a header set with c.header()
    // before next() would be lost on those answers without a word. Said here instead.
    files: ['src/api/**/*.ts'],
    ignores: ['src/api/observe-requests.ts'],
    rules: {
      'no-restricted-syntax': [
        'error',
        {
          selector: "CallExpression[callee.property.name='header'][arguments.length>=2]",
          message: 'Pass response headers to jsonResponse() (src/api/respond.ts); c.header() does not reach its answers.',
        },
      ],
    },
  },
  {
    files: ['**/*.js', '**/*.cjs', '**/*.mjs'],
    ...tseslint.configs.disableTypeChecked,
  },
  {
    files: ['**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', globals: { module: 'writable', require: 'readonly' } },
  },
);
