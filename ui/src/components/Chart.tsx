// A uPlot chart of daily series (x = day, UTC), each series on its own y scale (left axis for
// the first, right for the second). uPlot draws on a canvas; the tables beside every chart carry
// the same numbers for screen readers.
import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export interface Series {
  label: string;
  values: number[];
  color: string;
}

const halfDay = 12 * 3600;

export function DailyChart({ days, series, title }: { days: string[]; series: Series[]; title: string }) {
  const container = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const element = container.current;
    if (!element || days.length === 0) return;
    // The canvas cannot use CSS variables: take the theme's text colour from the page.
    const text = getComputedStyle(element).color;
    const grid = getComputedStyle(document.documentElement).getPropertyValue('--border').trim() || '#ccc';
    const xs = days.map((day) => Date.parse(`${day}T00:00:00Z`) / 1000);
    const scales: uPlot.Scales = { x: { time: true, range: (_u, min, max) => [min - halfDay, max + halfDay] } };
    for (const s of series) scales[s.label] = { auto: true, range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] };
    const plot = new uPlot(
      {
        width: Math.max(280, element.clientWidth),
        height: 240,
        title,
        scales,
        series: [
          {},
          ...series.map((s) => ({ label: s.label, scale: s.label, stroke: s.color, fill: `${s.color}22`, width: 2, points: { show: true } })),
        ],
        axes: [
          { stroke: text, grid: { stroke: grid } },
          ...series.slice(0, 2).map((s, i) => ({
            scale: s.label,
            label: s.label,
            side: i === 0 ? 3 : 1,
            stroke: text,
            grid: { show: i === 0, stroke: grid },
          })),
        ],
      },
      [xs, ...series.map((s) => s.values)],
      element,
    );
    const resize = () => plot.setSize({ width: Math.max(280, element.clientWidth), height: 240 });
    window.addEventListener('resize', resize);
    return () => {
      window.removeEventListener('resize', resize);
      plot.destroy();
    };
  }, [days, series, title]);
  return <div className="chart" ref={container} role="img" aria-label={title} />;
}
