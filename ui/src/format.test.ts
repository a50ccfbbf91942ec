import { describe, expect, it } from 'vitest';
import { dayRange, formatAgo, formatMb, splitArgs, toCsv } from './format';

describe('format', () => {
  it('splits engine arguments with quotes', () => {
    expect(splitArgs(`--mode echo --note "a b" --x 'c d'`)).toEqual(['--mode', 'echo', '--note', 'a b', '--x', 'c d']);
    expect(splitArgs('   ')).toEqual([]);
  });
  it('quotes CSV cells that need it', () => {
    expect(toCsv([{ a: 'x,y', b: 'say "hi"' }, { a: 1, b: 2 }], ['a', 'b'])).toBe('a,b\n"x,y","say ""hi"""\n1,2\n');
  });
  it('formats sizes and ages', () => {
    expect(formatMb(512)).toBe('512 MiB');
    expect(formatMb(81920)).toBe('80.0 GiB');
    expect(formatAgo(undefined)).toBe('never');
    expect(formatAgo(1000, 31000)).toBe('30s ago');
  });
});

describe('dayRange', () => {
  it('lists every day, across a month end, both ends included', () => {
    expect(dayRange('2026-11-29', '2026-12-02')).toEqual(['2026-11-29', '2026-11-30', '2026-12-01', '2026-12-02']);
    expect(dayRange('2026-12-02', '2026-12-02')).toEqual(['2026-12-02']);
    expect(dayRange('2026-12-03', '2026-12-02')).toEqual([]);
  });
});
