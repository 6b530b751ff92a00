// A pod's log, terminal and attach (docs/console-term.md): the views
// (logs.ts, terminal.ts) and the actions an object page offers on a pod,
// each only when the cluster's RBAC allows it (SelfSubjectAccessReview):
//
//   Logs      get pods/log
//   Terminal  create pods/exec   (a WebSocket exec is a GET, but the agent
//   Attach    create pods/attach  asks create, as kubectl's POST does)

import { can } from "./access";
import { href } from "./router";
import { registerActions, type Action } from "./views";
import "./logs";
import "./terminal";

registerActions(async (o) => {
  if (o.res.group !== "" || o.res.resource !== "pods" || !o.namespace) return [];
  const ns = o.namespace;
  const may = (verb: string, subresource: string) =>
    can(o.cluster, { verb, resource: "pods", subresource, namespace: ns, name: o.name });
  const [logs, exec, attach] = await Promise.all([may("get", "log"), may("create", "exec"), may("create", "attach")]);
  const to = (view: "log" | "exec" | "attach") => href({ view, cluster: o.cluster, namespace: ns, pod: o.name });
  const actions: Action[] = [];
  if (logs) actions.push({ id: "logs", label: "Logs", href: to("log") });
  if (exec) actions.push({ id: "exec", label: "Terminal", href: to("exec") });
  if (attach) actions.push({ id: "attach", label: "Attach", href: to("attach") });
  return actions;
});
