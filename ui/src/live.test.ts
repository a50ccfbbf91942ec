import { describe, expect, it } from 'vitest';
import { applyEvent } from './live';
import type { Doc } from './types';

const doc = (name: string, extra = 0) => ({ metadata: { name }, extra }) as Doc & { extra: number };

describe('applyEvent', () => {
  it('inserts in name order, replaces, and deletes', () => {
    let listing = { items: [doc('a'), doc('c')], revision: 10 };
    listing = applyEvent(listing, { type: 'PUT', key: '/x/b', revision: 11, object: doc('b') });
    expect(listing.items.map((d) => d.metadata.name)).toEqual(['a', 'b', 'c']);
    listing = applyEvent(listing, { type: 'PUT', key: '/x/b', revision: 12, object: doc('b', 7) });
    expect(listing.items.map((d) => d.extra)).toEqual([0, 7, 0]);
    listing = applyEvent(listing, { type: 'DELETE', key: '/x/a', revision: 13, object: doc('a') });
    expect(listing.items.map((d) => d.metadata.name)).toEqual(['b', 'c']);
    expect(listing.revision).toBe(13);
  });

  it('ignores the delete of something it never had', () => {
    const listing = applyEvent({ items: [doc('a')], revision: 1 }, { type: 'DELETE', key: '/x/z', revision: 2, object: doc('z') });
    expect(listing.items).toHaveLength(1);
  });
});

import { isReplicaOf } from './pages/DeploymentDetail';

describe('isReplicaOf', () => {
  it('matches only the deployment’s own replicas', () => {
    expect(isReplicaOf('replica/chat-ab12c', 'chat')).toBe(true);
    expect(isReplicaOf('replica/chat-2-ab12c', 'chat')).toBe(false);
    expect(isReplicaOf('replica/chat-2-ab12c', 'chat-2')).toBe(true);
    expect(isReplicaOf('deployment/chat', 'chat')).toBe(false);
  });
});
