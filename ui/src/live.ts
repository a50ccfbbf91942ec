// Live lists: a resource is listed once, then followed through the watch API; every component
// that shows it shares one listing and one watch stream (reference-counted).
import { useEffect } from 'react';
import { QueryClient, useQuery, useQueryClient } from '@tanstack/react-query';
import { api, ApiError, watch, type WatchEvent } from './api';
import type { Doc } from './types';

export interface Listing<T> {
  items: T[];
  revision: number;
}

export type Plural = 'nodes' | 'deployments' | 'replicas' | 'events';

export const listKey = (plural: Plural) => ['list', plural] as const;

// The listing after one watch event: a PUT replaces or adds the document (kept sorted by name, as
// the server lists them), a DELETE removes it.
export function applyEvent<T extends Doc>(listing: Listing<T>, event: WatchEvent<T>): Listing<T> {
  const name = event.object.metadata.name;
  const items = listing.items.filter((item) => item.metadata.name !== name);
  if (event.type === 'PUT') {
    const at = items.findIndex((item) => item.metadata.name > name);
    items.splice(at < 0 ? items.length : at, 0, event.object);
  }
  return { items, revision: Math.max(listing.revision, event.revision) };
}

const feeds = new Map<Plural, { users: number; controller: AbortController }>();

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    });
  });

async function follow<T extends Doc>(client: QueryClient, plural: Plural, signal: AbortSignal) {
  let backoff = 500;
  while (!signal.aborted) {
    try {
      // List afresh (also after a 410 compacted or a dropped stream), then watch from just after it.
      const listing = await client.fetchQuery({
        queryKey: listKey(plural),
        queryFn: () => api<Listing<T>>(`/api/v1/${plural}`),
        staleTime: 0,
      });
      let from = listing.revision + 1;
      await watch<T>(
        plural,
        from,
        (event) => {
          from = event.revision + 1;
          backoff = 500;
          client.setQueryData<Listing<T>>(listKey(plural), (old) => applyEvent(old ?? { items: [], revision: 0 }, event));
        },
        signal,
      );
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && (error.status === 401 || error.status === 403)) return;
    }
    await sleep(backoff, signal);
    backoff = Math.min(backoff * 2, 15000);
  }
}

function subscribe(client: QueryClient, plural: Plural): () => void {
  let feed = feeds.get(plural);
  if (!feed) {
    feed = { users: 0, controller: new AbortController() };
    feeds.set(plural, feed);
    void follow(client, plural, feed.controller.signal);
  }
  feed.users += 1;
  return () => {
    const current = feeds.get(plural);
    if (!current) return;
    current.users -= 1;
    if (current.users === 0) {
      current.controller.abort();
      feeds.delete(plural);
    }
  };
}

// Stops every watch (on logout).
export function stopAllFeeds(): void {
  for (const feed of feeds.values()) feed.controller.abort();
  feeds.clear();
}

export function useLive<T extends Doc>(plural: Plural) {
  const client = useQueryClient();
  useEffect(() => subscribe(client, plural), [client, plural]);
  return useQuery({
    queryKey: listKey(plural),
    queryFn: () => api<Listing<T>>(`/api/v1/${plural}`),
    staleTime: Infinity,
  });
}
