// Lint rules: typescript-eslint's recommended set, type-aware, plus the bans we keep with reasons.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', '.bench-dist/', 'node_modules/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    rules: {
      // Only native/ and src/ebpf/ may touch koffi: everything else sees typed interfaces.
      'no-restricted-imports': ['error', { paths: [{ name: 'koffi', message: 'use native/ or src/ebpf/ instead' }] }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['native/**/*.ts'],
    rules: { 'no-restricted-imports': 'off' },
  },
  {
    files: ['**/*.mjs', '**/*.js'],
    ignores: ['src/dashboard/assets/**'],
    languageOptions: { globals: globals.node },
  },
  {
    // The dashboard's page script runs in the browser.
    files: ['src/dashboard/assets/**/*.js'],
    languageOptions: { globals: globals.browser, sourceType: 'script' },
  },
);
