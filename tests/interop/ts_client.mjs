// Real MCP TypeScript SDK clients (what most IDE and desktop clients run) driving `opsgate serve`:
// 1.x (`@modelcontextprotocol/sdk`) or 2.x (`@modelcontextprotocol/client`), as the spec says.
//
// Usage: node ts_client.mjs SPEC.json
//   SPEC: {"sdk": 1 | 2, "command": "...", "args": [...], "env": {...}, "calls": [{"name": "...", "arguments": {...}}, ...]}
// Prints one JSON document on stdout:
//   {"client": {"name", "version"}, "tools": [names], "results": [{"result": <what callTool returned>} | {"exception": "<message>"}]}
// Like an agent's host, it lists tools first: the SDK caches each tool's outputSchema then and
// validates later results against it (1.x even error results), which is what this client is here to exercise.
import { readFileSync } from "node:fs";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const sdk = spec.sdk === 2
  ? { name: "@modelcontextprotocol/client", main: "@modelcontextprotocol/client", stdio: "@modelcontextprotocol/client/stdio" }
  : { name: "@modelcontextprotocol/sdk", main: "@modelcontextprotocol/sdk/client/index.js", stdio: "@modelcontextprotocol/sdk/client/stdio.js" };
const { Client } = await import(sdk.main);
const { StdioClientTransport } = await import(sdk.stdio);
const sdkManifest = new URL(`./node_modules/${sdk.name}/package.json`, import.meta.url);
const sdkVersion = JSON.parse(readFileSync(sdkManifest, "utf8")).version;

const transport = new StdioClientTransport({
  command: spec.command,
  args: spec.args ?? [],
  env: spec.env,
  stderr: "inherit",
});
const client = new Client({ name: `opsgate-interop-ts${spec.sdk === 2 ? 2 : 1}`, version: sdkVersion });
await client.connect(transport);
const tools = (await client.listTools()).tools.map((tool) => tool.name);
const results = [];
for (const call of spec.calls) {
  try {
    results.push({ result: await client.callTool({ name: call.name, arguments: call.arguments ?? {} }) });
  } catch (error) {
    results.push({ exception: String(error?.message ?? error) });
  }
}
await client.close();
process.stdout.write(JSON.stringify({ client: { name: sdk.name, version: sdkVersion }, tools, results }));
