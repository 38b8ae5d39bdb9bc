// A real MCP TypeScript SDK 1.x client (what most IDE and desktop clients run) driving `opsgate serve`.
//
// Usage: node ts_client.mjs SPEC.json
//   SPEC: {"command": "...", "args": [...], "env": {...}, "calls": [{"name": "...", "arguments": {...}}, ...]}
// Prints one JSON document on stdout:
//   {"client": {"name", "version"}, "tools": [names], "results": [{"result": <what callTool returned>} | {"exception": "<message>"}]}
// Like an agent's host, it lists tools first: the SDK caches each tool's outputSchema then and
// validates every later result against it, which is what this client is here to exercise.
import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const sdkManifest = new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url);
const sdkVersion = JSON.parse(readFileSync(sdkManifest, "utf8")).version;

const transport = new StdioClientTransport({
  command: spec.command,
  args: spec.args ?? [],
  env: spec.env,
  stderr: "inherit",
});
const client = new Client({ name: "opsgate-interop-ts", version: sdkVersion });
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
process.stdout.write(JSON.stringify({ client: { name: "@modelcontextprotocol/sdk", version: sdkVersion }, tools, results }));
