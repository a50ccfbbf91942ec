// The MCP SDK's own TypeScript client drives `nebula mcp` over stdio and /mcp over Streamable
// HTTP, against a real `nebula up` (simulated GPUs, API keys on). Usage: node e2e.mjs NEBULA_BINARY
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import assert from "node:assert/strict";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const binary = process.argv[2];
if (!binary) {
  console.error("usage: node e2e.mjs NEBULA_BINARY");
  process.exit(2);
}

const dataDir = mkdtempSync(path.join(tmpdir(), "nebula-mcp-e2e-"));
let server;
const cleanups = [];

function step(name) {
  console.log(`--- ${name}`);
}

// Polls until check() returns a truthy value; fails after timeoutMs.
async function waitFor(what, check, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

function startServer() {
  return new Promise((resolve, reject) => {
    server = spawn(
      binary,
      ["up", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--sim-gpus", "1xH100-80GB", "--auth", "keys",
       "--name", "mcp-node", "--exit-with-parent"],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    const onData = (chunk) => {
      output += chunk.toString();
      const match = output.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (match) resolve(match[1]);
    };
    server.stdout.on("data", onData);
    server.stderr.on("data", onData);
    server.on("exit", (code) => reject(new Error(`nebula up exited (${code}):\n${output}`)));
  });
}

async function api(url, key, method, route, body) {
  const response = await fetch(url + route, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

function structured(result) {
  assert.equal(result.isError, false, JSON.stringify(result.content));
  assert.ok(result.structuredContent, "structured content");
  return result.structuredContent;
}

async function stdioClient(url, key, extraArgs = []) {
  const transport = new StdioClientTransport({
    command: binary,
    args: ["mcp", "--server", url, ...extraArgs],
    env: { ...process.env, NEBULA_API_KEY: key },
    stderr: "inherit",
  });
  const client = new Client({ name: "nebula-e2e", version: "1.0.0" });
  await client.connect(transport);
  cleanups.push(() => client.close());
  return client;
}

async function httpClient(url, key) {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const transport = new StreamableHTTPClientTransport(new URL(url + "/mcp"), { requestInit: { headers } });
  const client = new Client({ name: "nebula-e2e-http", version: "1.0.0" });
  await client.connect(transport);
  cleanups.push(() => client.close());
  return { client, transport };
}

// Sends raw lines to `nebula mcp` and collects its answers until stdin's end makes it exit.
function rawStdio(url, key, lines) {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, ["mcp", "--server", url], {
      env: { ...process.env, NEBULA_API_KEY: key },
      stdio: ["pipe", "pipe", "inherit"],
    });
    let output = "";
    child.stdout.on("data", (chunk) => (output += chunk.toString()));
    child.on("error", reject);
    child.on("exit", (code) => resolve({ code, answers: output.split("\n").filter(Boolean).map((l) => JSON.parse(l)) }));
    for (const line of lines) child.stdin.write(line + "\n");
    child.stdin.end();
  });
}

async function main() {
  const url = await startServer();
  const admin = readFileSync(path.join(dataDir, "admin.key"), "utf8").trim();
  await waitFor("the node's GPU", async () => (await api(url, admin, "GET", "/api/v1/gpus")).body?.items?.length > 0);
  const created = await api(url, admin, "POST", "/api/v1/keys", { name: "assistant", scope: "inference" });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const inferenceKey = created.body.secret;

  step("stdio: initialize, tools and their annotations");
  const stdio = await stdioClient(url, admin);
  assert.equal(stdio.getServerVersion().name, "nebula");
  assert.ok(stdio.getServerCapabilities().resources.subscribe);
  const { tools } = await stdio.listTools();
  const names = tools.map((tool) => tool.name);
  for (const name of ["gpu_status", "list_nodes", "list_deployments", "get_deployment", "simulate_placement", "deploy",
                      "scale", "restart", "sleep", "wake", "remove", "list_modes", "switch_mode", "logs", "usage",
                      "chat"]) {
    assert.ok(names.includes(name), `tool ${name}`);
  }
  const byName = Object.fromEntries(tools.map((tool) => [tool.name, tool]));
  assert.equal(byName.gpu_status.annotations.readOnlyHint, true);
  assert.equal(byName.remove.annotations.destructiveHint, true);
  assert.equal(byName.sleep.annotations.readOnlyHint, false);
  assert.equal(byName.wake.annotations.idempotentHint, true);
  assert.equal(byName.deploy.inputSchema.properties.dry_run.type, "boolean");

  step("stdio: read-only tools");
  const gpus = structured(await stdio.callTool({ name: "gpu_status", arguments: {} }));
  assert.equal(gpus.items.length, 1);
  assert.equal(gpus.items[0].memory_total_mb, 81920);
  const nodes = structured(await stdio.callTool({ name: "list_nodes", arguments: {} }));
  assert.equal(nodes.items[0].metadata.name, "mcp-node");
  const plan = structured(await stdio.callTool({
    name: "simulate_placement",
    arguments: { model: "llama-3.1-70b-instruct", max_context: 131072, gpus_per_replica: 1 },
  }));
  assert.equal(plan.fits, false);
  assert.ok(plan.alternatives.length > 0, "alternatives for a plan that does not fit");

  step("stdio: deploy (dry run, then for real), chat, logs, usage");
  const dry = structured(await stdio.callTool({
    name: "deploy",
    arguments: { name: "tiny", model: "llama-3.1-8b-instruct", dry_run: true },
  }));
  assert.equal(dry.plan.fits, true);
  assert.equal((await api(url, admin, "GET", "/api/v1/deployments/tiny")).status, 404, "a dry run writes nothing");
  const deployed = structured(await stdio.callTool({
    name: "deploy",
    arguments: { name: "tiny", model: "llama-3.1-8b-instruct", max_context: 4096 },
  }));
  assert.equal(deployed.created, true);
  await waitFor("tiny to be ready", async () => {
    const got = structured(await stdio.callTool({ name: "get_deployment", arguments: { name: "tiny" } }));
    return got.deployment.status?.ready_replicas >= 1 && got.replicas.length === 1;
  });
  const answer = structured(await stdio.callTool({
    name: "chat",
    arguments: { model: "tiny", prompt: "Say hello", max_tokens: 8 },
  }));
  assert.ok(answer.content.length > 0, "the completion has text");
  assert.ok(answer.usage.completion_tokens > 0);
  const logs = structured(await stdio.callTool({ name: "logs", arguments: { name: "tiny", lines: 5 } }));
  assert.ok(logs.lines.length <= 5);
  const usage = structured(await stdio.callTool({ name: "usage", arguments: { model: "tiny" } }));
  assert.ok(usage.items.length >= 1);

  step("stdio: sleep and wake");
  const slept = structured(await stdio.callTool({ name: "sleep", arguments: { name: "tiny" } }));
  assert.equal(slept.changed, true);
  assert.ok(["sleep-requested", "asleep"].includes(slept.state), slept.state);
  const phaseOfTiny = async () => {
    const got = structured(await stdio.callTool({ name: "get_deployment", arguments: { name: "tiny" } }));
    return got.replicas.map((replica) => replica.status?.phase).join(",");
  };
  await waitFor("tiny to sleep", async () => (await phaseOfTiny()) === "Sleeping");
  const again = structured(await stdio.callTool({ name: "sleep", arguments: { name: "tiny" } }));
  assert.equal(again.changed, false);
  assert.equal(again.state, "asleep");
  const woken = structured(await stdio.callTool({ name: "wake", arguments: { name: "tiny" } }));
  assert.equal(woken.changed, true);
  await waitFor("tiny to wake", async () => (await phaseOfTiny()) === "Ready");
  const ghostSleep = await stdio.callTool({ name: "sleep", arguments: { name: "ghost" } });
  assert.equal(ghostSleep.isError, true);
  assert.match(ghostSleep.content[0].text, /not found/);

  step("stdio: errors a model can act on, and protocol errors");
  const missing = await stdio.callTool({ name: "get_deployment", arguments: { name: "ghost" } });
  assert.equal(missing.isError, true);
  assert.match(missing.content[0].text, /not found/);
  await assert.rejects(stdio.callTool({ name: "no_such_tool", arguments: {} }), (error) => error.code === -32602);
  await assert.rejects(stdio.callTool({ name: "scale", arguments: { name: "tiny", replicas: "two" } }),
                       (error) => error.code === -32602 && /replicas/.test(error.message));
  await assert.rejects(stdio.readResource({ uri: "nebula://nowhere" }), (error) => error.code === -32002);

  step("stdio: resources, templates and a subscription");
  const { resources } = await stdio.listResources();
  assert.deepEqual(resources.map((r) => r.uri).sort(),
                   ["nebula://deployments", "nebula://events", "nebula://gpus", "nebula://modes", "nebula://nodes"]);
  const { resourceTemplates } = await stdio.listResourceTemplates();
  assert.equal(resourceTemplates[0].uriTemplate, "nebula://deployments/{name}");
  const read = await stdio.readResource({ uri: "nebula://deployments/tiny" });
  assert.equal(JSON.parse(read.contents[0].text).deployment.metadata.name, "tiny");
  const updates = [];
  stdio.setNotificationHandler(ResourceUpdatedNotificationSchema, (notification) => updates.push(notification.params.uri));
  await stdio.subscribeResource({ uri: "nebula://deployments/tiny" });
  // The watch opens asynchronously: change the deployment until a notification arrives.
  let replicas = 1;
  await waitFor("a resource update", async () => {
    replicas = replicas === 1 ? 2 : 1;
    structured(await stdio.callTool({ name: "scale", arguments: { name: "tiny", replicas } }));
    await new Promise((resolve) => setTimeout(resolve, 300));
    return updates.includes("nebula://deployments/tiny");
  });

  step("stdio: --read-only");
  const readOnly = await stdioClient(url, admin, ["--read-only"]);
  const readOnlyTools = (await readOnly.listTools()).tools;
  assert.ok(readOnlyTools.every((tool) => tool.annotations.readOnlyHint === true));
  assert.ok(!readOnlyTools.some((tool) => ["remove", "sleep", "wake"].includes(tool.name)));
  await assert.rejects(readOnly.callTool({ name: "remove", arguments: { name: "tiny" } }),
                       (error) => error.code === -32602);

  step("stdio: malformed, unknown and huge messages; the server keeps serving; EOF exits 0");
  const raw = await rawStdio(url, admin, [
    "this is not json",
    JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-06-18" } }),
    JSON.stringify({ jsonrpc: "2.0", id: 2, method: "no/such/method" }),
    JSON.stringify({ jsonrpc: "2.0", id: 3, method: "ping", params: { pad: "x".repeat(5 * 1024 * 1024) } }),
    JSON.stringify([{ jsonrpc: "2.0", id: 4, method: "ping" }]),
    JSON.stringify({ jsonrpc: "2.0", id: 5, method: "ping" }),
  ]);
  assert.equal(raw.code, 0);
  const byId = (id) => raw.answers.find((a) => a.id === id);
  assert.equal(raw.answers.filter((a) => a.id === null && a.error?.code === -32700).length, 1, "parse error");
  assert.equal(byId(1).result.protocolVersion, "2025-06-18");
  assert.equal(byId(2).error.code, -32601);
  assert.ok(raw.answers.some((a) => a.id === null && /larger than the limit/.test(a.error?.message ?? "")), "size limit");
  assert.ok(raw.answers.some((a) => a.id === null && /batches/.test(a.error?.message ?? "")), "batch refused");
  assert.deepEqual(byId(5).result, {});

  step("Streamable HTTP: the admin key, a subscription over the GET stream, DELETE");
  const { client: http, transport } = await httpClient(url, admin);
  assert.ok(transport.sessionId, "a session id");
  const deployments = structured(await http.callTool({ name: "list_deployments", arguments: {} }));
  assert.deepEqual(deployments.items.map((d) => d.metadata.name), ["tiny"]);
  const httpUpdates = [];
  http.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => httpUpdates.push(n.params.uri));
  await http.subscribeResource({ uri: "nebula://deployments" });
  await waitFor("an update over the GET stream", async () => {
    replicas = replicas === 1 ? 2 : 1;
    structured(await http.callTool({ name: "scale", arguments: { name: "tiny", replicas } }));
    await new Promise((resolve) => setTimeout(resolve, 300));
    return httpUpdates.includes("nebula://deployments");
  });
  const switched = await http.callTool({ name: "switch_mode", arguments: { name: "nowhere", dry_run: true } });
  assert.equal(switched.isError, true);
  const sessionId = transport.sessionId;
  await transport.terminateSession();
  const after = await fetch(url + "/mcp", {
    method: "POST",
    headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json",
               Accept: "application/json, text/event-stream", "Mcp-Session-Id": sessionId },
    body: JSON.stringify({ jsonrpc: "2.0", id: 9, method: "ping" }),
  });
  assert.equal(after.status, 404, "an ended session is gone");

  step("Streamable HTTP: an inference key cannot change the cluster; no key cannot connect");
  const { client: limited } = await httpClient(url, inferenceKey);
  const refused = await limited.callTool({ name: "remove", arguments: { name: "tiny" } });
  assert.equal(refused.isError, true);
  assert.match(refused.content[0].text, /admin key/);
  const refusedSleep = await limited.callTool({ name: "sleep", arguments: { name: "tiny" } });
  assert.equal(refusedSleep.isError, true);
  assert.match(refusedSleep.content[0].text, /admin key/);
  const chatted = structured(await limited.callTool({ name: "chat", arguments: { model: "tiny", prompt: "hi" } }));
  assert.ok(chatted.content.length > 0);
  assert.equal((await api(url, admin, "GET", "/api/v1/deployments/tiny")).status, 200, "tiny survived");
  await assert.rejects(httpClient(url, ""), /401|Unauthorized|invalid/i);
  const foreign = await fetch(url + "/mcp", {
    method: "POST",
    headers: { Authorization: `Bearer ${admin}`, "Content-Type": "application/json", Origin: "http://evil.example" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "ping" }),
  });
  assert.equal(foreign.status, 403, "a foreign Origin is refused");

  step("stdio: remove");
  const removed = structured(await stdio.callTool({ name: "remove", arguments: { name: "tiny" } }));
  assert.equal(removed.metadata.name, "tiny");
  console.log("mcp e2e: ok");
}

async function cleanup() {
  for (const close of cleanups) await close().catch(() => {});
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once("exit", resolve));
    server.kill("SIGTERM");
    await exited;
  }
  rmSync(dataDir, { recursive: true, force: true });
}

const watchdog = setTimeout(() => {
  console.error("mcp e2e: no result within 90 s");
  process.exit(1);
}, 90000);

main()
  .then(async () => {
    await cleanup();
    clearTimeout(watchdog);
  })
  .catch(async (error) => {
    console.error("mcp e2e: FAILED:", error);
    await cleanup();
    clearTimeout(watchdog);
    process.exitCode = 1;
  });
