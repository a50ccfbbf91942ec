// Small building blocks every page shares: states (loading, empty, error), badges, VRAM bars and
// a confirmation dialog.
import { useEffect, useId, useRef, type ReactNode } from 'react';
import { ApiError } from '../api';
import { formatMb } from '../format';

export function Loading({ what }: { what: string }) {
  return (
    <div className="state" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" /> Loading {what}…
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="state empty">
      <strong>{title}</strong>
      {children && <div className="muted">{children}</div>}
    </div>
  );
}

// What went wrong, and what to do about it.
export function ErrorBox({ error, action }: { error: unknown; action?: string }) {
  if (!error) return null;
  const message = error instanceof Error ? error.message : String(error);
  let hint = action ?? '';
  if (error instanceof ApiError) {
    if (error.status === 401) hint = 'Your API key was refused: sign in again with a valid admin key.';
    else if (error.status === 403) hint = 'This key may not do that: use an admin key.';
    else if (error.status === 0) hint = 'Start the server again (`make run` or `nebula up`), then reload this page.';
  }
  return (
    <div className="alert error" role="alert">
      <strong>{message}</strong>
      {hint && <div>{hint}</div>}
    </div>
  );
}

const phaseTone: Record<string, string> = {
  Ready: 'ok',
  Complete: 'ok',
  Progressing: 'info',
  Scheduled: 'info',
  Starting: 'info',
  Downloading: 'info',
  Pending: 'warn',
  Idle: 'muted',
  Sleeping: 'muted',
  Stopping: 'muted',
  Failed: 'bad',
  Unhealthy: 'bad',
  Unknown: 'bad',
  Warning: 'bad',
  Normal: 'muted',
};

export function Badge({ children, tone }: { children: ReactNode; tone?: string }) {
  const inferred = typeof children === 'string' ? phaseTone[children] : undefined;
  return <span className={`badge ${tone ?? inferred ?? 'muted'}`}>{children}</span>;
}

// VRAM of one GPU: allocated (reserved by replicas) as the bar, reported used as a marker.
export function VramBar({ total, allocated, used, label }: { total: number; allocated: number; used: number; label: string }) {
  const percent = (value: number) => (total > 0 ? Math.min(100, (value / total) * 100) : 0);
  const title = `${label}: ${formatMb(allocated)} allocated, ${formatMb(used)} reported used, of ${formatMb(total)}`;
  return (
    <div className="vram" title={title}>
      <div
        className="vram-track"
        role="meter"
        aria-label={`${label} VRAM allocated`}
        aria-valuemin={0}
        aria-valuemax={total}
        aria-valuenow={allocated}
        aria-valuetext={title}
      >
        <div className="vram-allocated" style={{ width: `${percent(allocated)}%` }} />
        <div className="vram-used" style={{ left: `${percent(used)}%` }} />
      </div>
      <div className="vram-text">
        {formatMb(allocated)} / {formatMb(total)} <span className="muted">(used {formatMb(used)})</span>
      </div>
    </div>
  );
}

// A modal <dialog>: focus is trapped by the browser, Escape cancels.
export function ConfirmDialog({
  open,
  title,
  children,
  confirmLabel,
  danger,
  busy,
  onConfirm,
  onCancel,
}: {
  open: boolean;
  title: string;
  children?: ReactNode;
  confirmLabel: string;
  danger?: boolean;
  busy?: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) {
      if (typeof dialog.showModal === 'function') dialog.showModal();
      else dialog.setAttribute('open', '');
    }
    if (!open && dialog.open) {
      if (typeof dialog.close === 'function') dialog.close();
      else dialog.removeAttribute('open');
    }
  }, [open]);
  return (
    <dialog ref={ref} aria-labelledby={titleId} onCancel={onCancel} className="dialog">
      <h2 id={titleId}>{title}</h2>
      <div>{children}</div>
      <div className="actions">
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
        <button type="button" className={danger ? 'danger' : 'primary'} onClick={onConfirm} disabled={busy}>
          {busy ? 'Working…' : confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

export function CopyButton({ text, label = 'Copy' }: { text: string; label?: string }) {
  return (
    <button
      type="button"
      onClick={(event) => {
        const button = event.currentTarget;
        const done = () => {
          button.textContent = 'Copied';
          setTimeout(() => (button.textContent = label), 1500);
        };
        if (navigator.clipboard) navigator.clipboard.writeText(text).then(done, () => (button.textContent = 'Select and copy'));
        else button.textContent = 'Select and copy';
      }}
    >
      {label}
    </button>
  );
}

export function PageHeader({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <header className="page-header">
      <h1>{title}</h1>
      <div className="page-actions">{children}</div>
    </header>
  );
}
