// The shared cases (lib/shared_cases.mjs) against the gateway and against engine-sim alone. The
// engines echo the prompt (--mode echo), so answers end with "stop" as a model's do.
import { after, before, describe, test } from 'node:test';

import { skipUnlessForced, startBoth } from './lib/harness.mjs';
import { sharedCases } from './lib/shared_cases.mjs';

const targets = {};

describe('shared cases', () => {
  before(async () => Object.assign(targets, await startBoth(['--mode', 'echo', '--max-model-len', '8192'])));
  after(async () => Promise.all(Object.values(targets).map((target) => target.stop())));

  for (const kind of ['gateway', 'engine']) {
    describe(kind, () => {
      for (const testCase of sharedCases) {
        test(testCase.name, { skip: testCase.skip && skipUnlessForced(testCase.skip) }, () => testCase.run(targets[kind]));
      }
    });
  }
});
