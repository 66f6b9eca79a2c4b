// An agent in JavaScript governed by `corral serve`, through the raw HTTP API (Node.js 18+,
// no packages). It starts a run, asks before each tool call, executes the tool itself when
// allowed, reports what it returned, and ends the run with its answer.
//
//   CORRAL_URL=http://127.0.0.1:8420 CORRAL_KEY=crl_... CORRAL_POLICY=support node http_agent.mjs
//
// The policy (a file in the server's --policy-dir) allows kb.read, described by its
// args_schema, e.g. {"type": "object", "properties": {"q": {"type": "string"}}}.

const base = process.env.CORRAL_URL ?? "http://127.0.0.1:8420";
const key = process.env.CORRAL_KEY;
const policy = process.env.CORRAL_POLICY ?? "default";
if (!key) {
  console.error("set CORRAL_KEY to an agent key (corral keys create --tenant T --role agent)");
  process.exit(2);
}

async function api(method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${answer.error?.code}: ${answer.error?.message}`);
  }
  return answer;
}

// The agent's own tool: corral never runs it, it only decides whether it may run.
const tools = {
  "kb.read": ({ q }) => `the knowledge base says: ${q} is up`,
};

const run = await api("POST", "/v1/runs", { policy, agent: "js-agent", task: "vendor status" });
console.log(`run started: ${run.run_id}`);

let notes = [];
for (const q of ["vendor A", "vendor B"]) {
  await api("POST", `/v1/runs/${run.run_id}/steps`);
  const call = { tool: "kb.read", arguments: { q } };
  let decision = await api("POST", `/v1/runs/${run.run_id}/tool-calls`, call);
  while (decision.decision === "pending") {
    // A write waiting for an operator: wait for the decision, then ask again.
    await api("GET", `/v1/approvals/${decision.approval_id}/wait?timeout=20`);
    decision = await api("POST", `/v1/runs/${run.run_id}/tool-calls`, call);
  }
  if (decision.decision === "stop") {
    console.log(`stopped: ${decision.stop.reason} (${decision.stop.detail})`);
    process.exit(1);
  }
  if (decision.decision === "rejected") {
    notes.push(`refused: ${decision.message}`);
    continue;
  }
  if (decision.decision === "replayed") {
    notes.push(decision.output);
    continue;
  }
  let report;
  try {
    const output = tools[decision.tool](decision.arguments);
    report = await api("POST", `/v1/runs/${run.run_id}/tool-calls/${decision.ticket}/report`, { output });
  } catch (error) {
    report = await api("POST", `/v1/runs/${run.run_id}/tool-calls/${decision.ticket}/report`, {
      error: String(error),
    });
  }
  if (report.decision === "stop") {
    console.log(`stopped: ${report.stop.reason}`);
    process.exit(1);
  }
  notes.push(report.observation);
}

const ended = await api("POST", `/v1/runs/${run.run_id}/end`, { answer: notes.join("; ") });
console.log(`run ended: ${ended.result.status}, ${ended.result.usage.tool_calls} tool calls`);
