import { useMemo, useState } from 'react';
import { useQuery } from '@tanstack/react-query';
import { api } from '../api';
import type { UsageRecord } from '../types';
import { DailyChart } from '../components/Chart';
import { Empty, ErrorBox, Loading, PageHeader } from '../components/ui';
import { dayRange, formatNumber, toCsv } from '../format';

const columns = ['day', 'key', 'model', 'requests', 'errors', 'prompt_tokens', 'completion_tokens', 'cached_tokens', 'total_tokens'];

export function groupBy(records: UsageRecord[], field: 'key' | 'model' | 'day') {
  const groups = new Map<string, { requests: number; tokens: number; errors: number }>();
  for (const record of records) {
    const group = groups.get(record[field]) ?? { requests: 0, tokens: 0, errors: 0 };
    group.requests += record.requests;
    group.tokens += record.total_tokens;
    group.errors += record.errors;
    groups.set(record[field], group);
  }
  return [...groups.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
}

function Totals({ title, rows }: { title: string; rows: [string, { requests: number; tokens: number; errors: number }][] }) {
  return (
    <div className="card table-wrap">
      <h2>{title}</h2>
      <table>
        <thead>
          <tr>
            <th scope="col">{title.replace('By ', '')}</th>
            <th scope="col">Requests</th>
            <th scope="col">Errors</th>
            <th scope="col">Tokens</th>
          </tr>
        </thead>
        <tbody>
          {rows.map(([name, totals]) => (
            <tr key={name}>
              <td>{name}</td>
              <td>{formatNumber(totals.requests)}</td>
              <td>{totals.errors}</td>
              <td>{formatNumber(totals.tokens)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function Usage() {
  const [since, setSince] = useState('30d');
  const usage = useQuery({
    queryKey: ['usage', since],
    queryFn: () => api<{ items: UsageRecord[]; total: UsageRecord }>(`/api/v1/usage?since=${encodeURIComponent(since)}`),
  });
  const records = useMemo(() => usage.data?.items ?? [], [usage.data]);
  // Every day from the first record (or a week ago, whichever is earlier) to today, days without
  // use as zeros: a chart needs more than one point to have a time axis.
  const byDay = useMemo(() => new Map(groupBy(records, 'day')), [records]);
  const days = useMemo(() => {
    const recorded = [...byDay.keys()];
    if (!recorded.length) return [];
    const today = new Date().toISOString().slice(0, 10);
    const weekAgo = new Date(Date.now() - 6 * 86400000).toISOString().slice(0, 10);
    const first = recorded[0]! < weekAgo ? recorded[0]! : weekAgo;
    const last = recorded[recorded.length - 1]! > today ? recorded[recorded.length - 1]! : today;
    return dayRange(first, last);
  }, [byDay]);
  const series = useMemo(
    () => [
      { label: 'tokens', values: days.map((day) => byDay.get(day)?.tokens ?? 0), color: '#6d5dfc' },
      { label: 'requests', values: days.map((day) => byDay.get(day)?.requests ?? 0), color: '#19a974' },
    ],
    [byDay, days],
  );
  const csvHref = useMemo(() => {
    if (!records.length) return '';
    const blob = new Blob([toCsv(records as unknown as Record<string, number | string>[], columns)], { type: 'text/csv' });
    return URL.createObjectURL(blob);
  }, [records]);

  return (
    <>
      <PageHeader title="Usage">
        <label htmlFor="usage-since" className="sr-only">
          Period
        </label>
        <select id="usage-since" value={since} onChange={(event) => setSince(event.target.value)}>
          <option value="1d">today</option>
          <option value="7d">last 7 days</option>
          <option value="30d">last 30 days</option>
          <option value="365d">last year</option>
        </select>
        {csvHref && (
          <a className="button" href={csvHref} download={`nebula-usage-${since}.csv`}>
            Download CSV
          </a>
        )}
      </PageHeader>
      <ErrorBox error={usage.error} />
      {usage.isPending ? (
        <Loading what="usage" />
      ) : records.length === 0 ? (
        <Empty title="No usage recorded in this period">Requests through /v1 are counted per key, model and day.</Empty>
      ) : (
        <>
          <section className="cards">
            <div className="card stat">
              <div className="stat-value">{formatNumber(usage.data?.total.requests ?? 0)}</div>
              <div className="muted">requests</div>
            </div>
            <div className="card stat">
              <div className="stat-value">{formatNumber(usage.data?.total.total_tokens ?? 0)}</div>
              <div className="muted">tokens</div>
            </div>
            <div className="card stat">
              <div className="stat-value">{formatNumber(usage.data?.total.errors ?? 0)}</div>
              <div className="muted">errors</div>
            </div>
          </section>
          <section className="card">
            <DailyChart title="Tokens and requests per day" days={days} series={series} />
          </section>
          <div className="two-columns">
            <Totals title="By key" rows={groupBy(records, 'key')} />
            <Totals title="By model" rows={groupBy(records, 'model')} />
          </div>
          <section className="card table-wrap">
            <h2>Every record</h2>
            <table>
              <thead>
                <tr>
                  {columns.map((column) => (
                    <th scope="col" key={column}>
                      {column.replace('_', ' ')}
                    </th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {records.map((record) => (
                  <tr key={`${record.day}/${record.key}/${record.model}`}>
                    {columns.map((column) => (
                      <td key={column}>{String(record[column as keyof UsageRecord])}</td>
                    ))}
                  </tr>
                ))}
              </tbody>
            </table>
          </section>
        </>
      )}
    </>
  );
}
