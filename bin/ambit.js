#!/usr/bin/env node
// The `ambit` executable: runs the compiled CLI when built, else the TypeScript sources through tsx.
import { existsSync } from 'node:fs';
import { URL } from 'node:url';

const built = new URL('../dist/src/cli/main.js', import.meta.url);

async function load() {
  if (existsSync(built)) return import(built.href);
  try {
    const { register } = await import('tsx/esm/api');
    register();
  } catch (err) {
    if (err?.code !== 'ERR_MODULE_NOT_FOUND') throw err;
    // tsx is a devDependency: without it and without dist/, there is nothing runnable.
    console.error('ambit: not built and tsx is not installed: run `npm install && npm run build` in the ambit checkout');
    process.exit(1);
  }
  return import(new URL('../src/cli/main.ts', import.meta.url).href);
}

const { main } = await load();
await main(process.argv);
