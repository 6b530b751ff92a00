// The registry that joins the console's parts: each view module registers
// the views it renders, and the modules that act on objects register the
// actions they offer on an object's page. main.ts dispatches.

import type { ResourceRef, Route, ViewName } from "./router";

// ViewContext is what a view renders with. main is empty when the view
// starts; signal aborts when the user navigates away (close watches,
// streams and sockets on it).
export interface ViewContext<R extends Route = Route> {
  main: HTMLElement;
  route: R;
  params: URLSearchParams;
  signal: AbortSignal;
  // setTitle sets the page's title ("… · Keyhole").
  setTitle(title: string): void;
  // crumbs sets the breadcrumb trail under the header: [text, href?] pairs.
  crumbs(trail: [string, string?][]): void;
}

export type View = (ctx: ViewContext) => void | Promise<void>;

const views = new Map<ViewName, View>();

export function registerView(name: ViewName, v: View): void {
  views.set(name, v);
}

export function viewFor(name: ViewName): View | undefined {
  return views.get(name);
}

// ObjectContext is an object on its page.
export interface ObjectContext {
  cluster: string;
  namespace?: string;
  res: ResourceRef;
  name: string;
  // object is the object as last read (JSON).
  object: KubeObject;
  signal: AbortSignal;
  // changed asks the page to read the object again (after an action).
  changed(): void;
}

// Action is something a user may do with an object: a link to a console
// view (href), or a command (run) the page asks to confirm first when
// confirm is set. id is stable (data-action) for tests and styling.
export interface Action {
  id: string;
  label: string;
  href?: string;
  run?: () => Promise<string | void>; // resolves to a message to show, if any
  confirm?: string;
  danger?: boolean;
}

// ActionProvider offers the actions that apply to an object and that the
// user may take (asked with access.can); [] when none.
export type ActionProvider = (o: ObjectContext) => Promise<Action[]>;

const providers: ActionProvider[] = [];

export function registerActions(p: ActionProvider): void {
  providers.push(p);
}

// actionsFor asks every provider; a provider that fails offers nothing.
export async function actionsFor(o: ObjectContext): Promise<Action[]> {
  const all = await Promise.all(providers.map((p) => p(o).catch(() => [] as Action[])));
  return all.flat();
}

// KubeObject is any Kubernetes object, as JSON.
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: { kind: string; name: string; apiVersion: string; uid: string; controller?: boolean }[];
    [k: string]: unknown;
  };
  spec?: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  status?: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  [k: string]: unknown;
}

// ObjectTab is a tab of an object's page beyond the page's own (the edit
// view, ?tab=edit): the object page lists the tabs that are available for
// the object and renders the one ?tab= names into its tab panel.
export interface ObjectTab {
  id: string; // the ?tab= value
  label: string;
  // available reports whether the tab applies to the object (and the user
  // may use it); absent means always.
  available?: (o: ObjectContext) => Promise<boolean>;
  render: (o: ObjectContext, panel: HTMLElement) => void | Promise<void>;
}

const tabs: ObjectTab[] = [];

export function registerObjectTab(t: ObjectTab): void {
  tabs.push(t);
}

// objectTab is the registered tab with id, if any.
export function objectTab(id: string): ObjectTab | undefined {
  return tabs.find((t) => t.id === id);
}

// objectTabs are the registered tabs, in registration order.
export function objectTabs(): readonly ObjectTab[] {
  return tabs;
}
