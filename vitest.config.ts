// Unit tests run anywhere; integration tests need root, a BTF kernel, cgroup v2 and bpffs
// (see test/README.md). Each integration file builds and removes its own lab.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
