import { NavLink, Outlet } from 'react-router';
import { useState } from 'react';

const pages = [
  ['/', 'Overview'],
  ['/deployments', 'Deployments'],
  ['/nodes', 'Nodes'],
  ['/modes', 'Modes'],
  ['/keys', 'API keys'],
  ['/usage', 'Usage'],
  ['/playground', 'Playground'],
] as const;

type Theme = 'light' | 'dark' | 'system';

export function applyTheme(theme: Theme) {
  if (theme === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
}

export function storedTheme(): Theme {
  const value = localStorage.getItem('nebula.theme');
  return value === 'light' || value === 'dark' ? value : 'system';
}

export function Layout({ onSignOut }: { onSignOut?: () => void }) {
  const [theme, setTheme] = useState<Theme>(storedTheme);
  const next: Theme = theme === 'system' ? 'dark' : theme === 'dark' ? 'light' : 'system';
  return (
    <div className="shell">
      <a className="skip" href="#main">
        Skip to content
      </a>
      <nav className="sidebar" aria-label="Main">
        <div className="brand">
          <img src="/ui/favicon.svg" alt="" width="22" height="22" /> Nebula
        </div>
        <ul>
          {pages.map(([path, label]) => (
            <li key={path}>
              <NavLink to={path} end={path === '/'}>
                {label}
              </NavLink>
            </li>
          ))}
        </ul>
        <div className="sidebar-foot">
          <button
            type="button"
            aria-label={`Theme: ${theme}. Switch to ${next}`}
            onClick={() => {
              localStorage.setItem('nebula.theme', next);
              applyTheme(next);
              setTheme(next);
            }}
          >
            Theme: {theme}
          </button>
          {onSignOut && (
            <button type="button" onClick={onSignOut}>
              Sign out
            </button>
          )}
        </div>
      </nav>
      <main id="main" tabIndex={-1}>
        <Outlet />
      </main>
    </div>
  );
}
