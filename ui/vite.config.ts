import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// Served by nebula at /ui/ from files embedded in the binary (src/webui). No inline script or
// style may end up in index.html: the server's Content-Security-Policy forbids both.
export default defineConfig({
  base: '/ui/',
  plugins: [react()],
  build: {
    modulePreload: { polyfill: false },
    sourcemap: false,
    assetsInlineLimit: 0,
  },
  server: {
    proxy: { '/api': 'http://127.0.0.1:8080', '/v1': 'http://127.0.0.1:8080', '/metrics': 'http://127.0.0.1:8080' },
  },
});
