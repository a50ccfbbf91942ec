// A uPlot chart of daily series (x = day). uPlot draws on a canvas; the table beside every chart
// carries the same numbers for screen readers.
import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export interface Series {
  label: string;
  values: number[];
  color: string;
}

export function DailyChart({ days, series, title }: { days: string[]; series: Series[]; title: string }) {
  const container = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = container.current;
    if (!element || days.length === 0) return;
    const xs = days.map((day) => Date.parse(`${day}T00:00:00Z`) / 1000);
    const plot = new uPlot(
      {
        width: Math.max(280, element.clientWidth),
        height: 220,
        title,
        series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, points: { show: true } }))],
        axes: [{ stroke: 'currentColor' }, { stroke: 'currentColor' }],
      },
      [xs, ...series.map((s) => s.values)],
      element,
    );
    const resize = () => plot.setSize({ width: Math.max(280, element.clientWidth), height: 220 });
    window.addEventListener('resize', resize);
    return () => {
      window.removeEventListener('resize', resize);
      plot.destroy();
    };
  }, [days, series, title]);
  return <div className="chart" ref={container} role="img" aria-label={title} />;
}
