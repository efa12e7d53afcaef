#!/usr/bin/env node
// The `ambit` executable: runs the compiled CLI when built, else the TypeScript sources through tsx.
// AMBIT_DIST=DIR runs a build in DIR instead of dist/ (a directory inside the checkout, so that
// its imports find node_modules): benches measure the processes as they ship, without tsx.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL, URL } from 'node:url';

const built = process.env.AMBIT_DIST
  ? pathToFileURL(join(resolve(process.env.AMBIT_DIST), 'src', 'cli', 'main.js'))
  : new URL('../dist/src/cli/main.js', import.meta.url);

async function load() {
  if (process.env.AMBIT_DIST && !existsSync(built)) {
    console.error(`ambit: AMBIT_DIST=${process.env.AMBIT_DIST} holds no build (${built.pathname}): build it with npx tsc -p tsconfig.build.json --outDir DIR`);
    process.exit(1);
  }
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
