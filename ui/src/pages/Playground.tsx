// Chat with a deployment through the public /v1 API, streamed, showing TTFT and tokens/s.
import { useRef, useState } from 'react';
import { Link } from 'react-router';
import { request } from '../api';
import { useLive } from '../live';
import { pieceOf, sseEvents } from '../sse';
import type { Deployment } from '../types';
import { Empty, ErrorBox, PageHeader } from '../components/ui';
import { formatSeconds } from '../format';

interface Message {
  role: 'user' | 'assistant';
  content: string;
  ttft?: number;
  tokensPerSecond?: number;
}

export function Playground() {
  const deployments = useLive<Deployment>('deployments');
  const [model, setModel] = useState('');
  const [apiKind, setApiKind] = useState<'chat' | 'responses'>('chat');
  const [temperature, setTemperature] = useState('0.7');
  const [maxTokens, setMaxTokens] = useState('256');
  const [prompt, setPrompt] = useState('');
  const [messages, setMessages] = useState<Message[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const abort = useRef<AbortController | null>(null);
  const items = deployments.data?.items ?? [];
  const chosen = model || items.find((d) => d.status?.phase === 'Ready')?.metadata.name || items[0]?.metadata.name || '';

  async function send() {
    if (!prompt.trim() || !chosen) return;
    const history: Message[] = [...messages, { role: 'user', content: prompt }];
    setMessages([...history, { role: 'assistant', content: '' }]);
    setPrompt('');
    setError(null);
    setBusy(true);
    const controller = new AbortController();
    abort.current = controller;
    const conversation = history.map(({ role, content }) => ({ role, content }));
    const body =
      apiKind === 'chat'
        ? {
            model: chosen,
            messages: conversation,
            stream: true,
            stream_options: { include_usage: true },
            temperature: Number(temperature),
            max_tokens: Number(maxTokens),
          }
        : { model: chosen, input: conversation, stream: true, temperature: Number(temperature), max_output_tokens: Number(maxTokens), store: false };
    const started = performance.now();
    let firstAt = 0;
    let text = '';
    let tokens = 0;
    let chunks = 0;
    const update = () => {
      const now = performance.now();
      const ttft = firstAt ? (firstAt - started) / 1000 : undefined;
      const generating = firstAt ? (now - firstAt) / 1000 : 0;
      const count = tokens || chunks;
      setMessages([
        ...history,
        { role: 'assistant', content: text, ttft, tokensPerSecond: generating > 0 ? count / generating : undefined },
      ]);
    };
    try {
      const response = await request(apiKind === 'chat' ? '/v1/chat/completions' : '/v1/responses', {
        method: 'POST',
        body,
        signal: controller.signal,
      });
      if (!response.body) throw new Error('the answer had no body');
      for await (const event of sseEvents(response.body, controller.signal)) {
        const piece = pieceOf(apiKind, event);
        if (piece.error) throw new Error(piece.error);
        if (piece.text) {
          if (!firstAt) firstAt = performance.now();
          text += piece.text;
          chunks += 1;
          update();
        }
        if (piece.completionTokens) tokens = piece.completionTokens;
      }
      update();
    } catch (caught) {
      if (!controller.signal.aborted) setError(caught);
    } finally {
      setBusy(false);
      abort.current = null;
    }
  }

  if (!deployments.isPending && items.length === 0) {
    return (
      <>
        <PageHeader title="Playground" />
        <Empty title="Nothing to chat with">
          <Link to="/deployments/new">Deploy a model</Link> first.
        </Empty>
      </>
    );
  }
  return (
    <>
      <PageHeader title="Playground">
        <button type="button" onClick={() => setMessages([])} disabled={busy || messages.length === 0}>
          Clear
        </button>
      </PageHeader>
      <div className="playground">
        <form
          className="card settings"
          aria-label="Settings"
          onSubmit={(event) => event.preventDefault()}
        >
          <div className="field">
            <label htmlFor="pg-model">Deployment</label>
            <select id="pg-model" value={chosen} onChange={(event) => setModel(event.target.value)}>
              {items.map((deployment) => (
                <option key={deployment.metadata.name} value={deployment.metadata.name}>
                  {deployment.metadata.name} ({deployment.status?.phase ?? 'Pending'})
                </option>
              ))}
            </select>
          </div>
          <fieldset>
            <legend>API</legend>
            <label className="check">
              <input type="radio" name="api" checked={apiKind === 'chat'} onChange={() => setApiKind('chat')} /> Chat completions
            </label>
            <label className="check">
              <input type="radio" name="api" checked={apiKind === 'responses'} onChange={() => setApiKind('responses')} /> Responses
            </label>
          </fieldset>
          <div className="field">
            <label htmlFor="pg-temperature">Temperature: {temperature}</label>
            <input id="pg-temperature" type="range" min={0} max={2} step={0.1} value={temperature} onChange={(event) => setTemperature(event.target.value)} />
          </div>
          <div className="field">
            <label htmlFor="pg-max-tokens">Max tokens</label>
            <input id="pg-max-tokens" type="number" min={1} max={32768} value={maxTokens} onChange={(event) => setMaxTokens(event.target.value)} />
          </div>
        </form>
        <section className="card chat" aria-label="Conversation">
          <ol className="messages" aria-live="polite">
            {messages.length === 0 && <li className="muted">Ask something: the answer streams in as the engine produces it.</li>}
            {messages.map((message, index) => (
              <li key={index} className={`message ${message.role}`} data-role={message.role}>
                <div className="who">{message.role === 'user' ? 'You' : chosen}</div>
                <div className="text">{message.content || (busy && index === messages.length - 1 ? '…' : '')}</div>
                {message.role === 'assistant' && message.ttft !== undefined && (
                  <div className="muted small" data-testid="answer-stats">
                    TTFT {formatSeconds(message.ttft)} · {message.tokensPerSecond ? `${message.tokensPerSecond.toFixed(1)} tokens/s` : '—'}
                  </div>
                )}
              </li>
            ))}
          </ol>
          <ErrorBox error={error} />
          <form
            className="composer"
            onSubmit={(event) => {
              event.preventDefault();
              void send();
            }}
          >
            <label htmlFor="pg-prompt" className="sr-only">
              Message
            </label>
            <textarea
              id="pg-prompt"
              rows={3}
              value={prompt}
              placeholder="Message (Enter to send, Shift+Enter for a new line)"
              onChange={(event) => setPrompt(event.target.value)}
              onKeyDown={(event) => {
                if (event.key === 'Enter' && !event.shiftKey) {
                  event.preventDefault();
                  void send();
                }
              }}
            />
            {busy ? (
              <button type="button" onClick={() => abort.current?.abort()}>
                Stop
              </button>
            ) : (
              <button type="submit" className="primary" disabled={!prompt.trim() || !chosen}>
                Send
              </button>
            )}
          </form>
        </section>
      </div>
    </>
  );
}
