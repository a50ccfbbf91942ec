import { BrowserRouter, Route, Routes } from 'react-router';
import { AuthGate } from './components/AuthGate';
import { Layout } from './components/Layout';
import { Empty } from './components/ui';
import { Overview } from './pages/Overview';
import { Deployments } from './pages/Deployments';
import { DeployForm } from './pages/DeployForm';
import { DeploymentDetail } from './pages/DeploymentDetail';
import { NodeDetail, Nodes } from './pages/Nodes';
import { Modes } from './pages/Modes';
import { Keys } from './pages/Keys';
import { Usage } from './pages/Usage';
import { Playground } from './pages/Playground';

export function App() {
  return (
    <BrowserRouter basename="/ui">
      <AuthGate>
        {(signOut) => (
          <Routes>
            <Route element={<Layout onSignOut={signOut} />}>
              <Route index element={<Overview />} />
              <Route path="deployments" element={<Deployments />} />
              <Route path="deployments/new" element={<DeployForm />} />
              <Route path="deployments/:name" element={<DeploymentDetail />} />
              <Route path="nodes" element={<Nodes />} />
              <Route path="nodes/:name" element={<NodeDetail />} />
              <Route path="modes" element={<Modes />} />
              <Route path="keys" element={<Keys />} />
              <Route path="usage" element={<Usage />} />
              <Route path="playground" element={<Playground />} />
              <Route path="*" element={<Empty title="No such page">Pick one from the menu.</Empty>} />
            </Route>
          </Routes>
        )}
      </AuthGate>
    </BrowserRouter>
  );
}
