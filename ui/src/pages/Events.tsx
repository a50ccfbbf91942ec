import type { ClusterEvent } from '../types';
import { Badge, Empty } from '../components/ui';
import { formatTime } from '../format';

export function EventList({ events, limit, filter }: { events: ClusterEvent[]; limit: number; filter?: (event: ClusterEvent) => boolean }) {
  const shown = events
    .filter(filter ?? (() => true))
    .sort((a, b) => b.time_ms - a.time_ms)
    .slice(0, limit);
  if (shown.length === 0) return <Empty title="No events yet" />;
  return (
    <ul className="events" aria-label="Events">
      {shown.map((event) => (
        <li key={event.metadata.name}>
          <time dateTime={new Date(event.time_ms).toISOString()}>{formatTime(event.time_ms)}</time>
          <Badge tone={event.type === 'Warning' ? 'bad' : 'muted'}>{event.reason}</Badge>
          <code>{event.object}</code> <span>{event.message}</span>
        </li>
      ))}
    </ul>
  );
}
