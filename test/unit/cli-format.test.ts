/** The commands' one table and age formatter, as kubectl prints them. */
import { describe, expect, it } from 'vitest';
import { age, table } from '../../src/cli/format.js';

describe('cli format', () => {
  it('prints left-aligned columns two spaces apart, without trailing spaces', () => {
    expect(table(['NAME', 'READY', 'AGE'], [['web-1', '1/1', '5m'], ['a', '0/1', '12d']])).toBe('NAME   READY  AGE\nweb-1  1/1    5m\na      0/1    12d');
    expect(table(['NAME', 'NOTE'], [['x', '']])).toBe('NAME  NOTE\nx');
    expect(table(['ONLY'], [])).toBe('ONLY');
  });

  it('gives ages as kubectl does', () => {
    const now = Date.parse('2026-12-07T12:00:00Z');
    const ago = (s: number) => age(new Date(now - s * 1000).toISOString(), now);
    expect([ago(0), ago(119), ago(120), ago(7199), ago(7200), ago(172_799), ago(172_800)]).toEqual(['0s', '119s', '2m', '120m', '2h', '48h', '2d']);
    expect(ago(-30)).toBe('0s');
  });
});
