// Modal dialogs for the actions (actions.ts, edit.ts): a confirmation that
// names what will change, and a number (the replica count). They are
// native <dialog>s opened with showModal(), so the rest of the page is
// inert while one is open, Escape cancels, the focus stays inside and goes
// back where it was when the dialog closes. Never window.prompt/confirm.

import { el } from "./dom";

interface DialogParts {
  title: string;
  body: (Node | string)[];
  okLabel: string;
  danger?: boolean;
  fields?: HTMLElement[];
}

// open shows a modal dialog with the parts; it resolves with the form (on
// OK, after the browser's own constraint validation passed) or null (on
// Cancel or Escape). first is focused when the dialog opens.
function open(p: DialogParts, first: (d: HTMLDialogElement) => HTMLElement | null, onOpen?: (ok: HTMLButtonElement) => void): Promise<HTMLFormElement | null> {
  return new Promise((resolve) => {
    const ok = el("button", { type: "submit", class: p.danger ? "act-ok danger" : "act-ok" }, p.okLabel);
    const cancel = el("button", { type: "button", class: "act-cancel secondary" }, "Cancel");
    const form = el("form", { class: "act-form" },
      el("h2", { id: "act-dialog-title" }, p.title),
      el("div", { id: "act-dialog-body" }, ...p.body),
      ...(p.fields ?? []),
      el("div", { class: "act-buttons" }, ok, cancel));
    const dialog = el("dialog", { class: "act-dialog", "aria-labelledby": "act-dialog-title", "aria-describedby": "act-dialog-body" }, form);
    let answer: HTMLFormElement | null = null;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault(); // a dialog form never navigates
      answer = form;
      dialog.close("ok");
    });
    cancel.addEventListener("click", () => dialog.close("cancel"));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    onOpen?.(ok);
    (first(dialog) ?? cancel).focus();
  });
}

export interface ConfirmOptions {
  title: string;
  body: (Node | string)[];
  okLabel: string;
  danger?: boolean;
  // typeToConfirm, when set, must be typed before OK is enabled (deleting
  // a namespace or a CustomResourceDefinition).
  typeToConfirm?: string;
}

// askConfirm asks the user to confirm; true when they did. A dangerous
// action starts with the focus on Cancel.
export async function askConfirm(o: ConfirmOptions): Promise<boolean> {
  const fields: HTMLElement[] = [];
  let typed: HTMLInputElement | null = null;
  if (o.typeToConfirm !== undefined) {
    typed = el("input", { id: "act-typed", type: "text", autocomplete: "off", spellcheck: "false", required: "" });
    fields.push(el("p", { class: "act-field" },
      el("label", { for: "act-typed" }, "Type ", el("code", {}, o.typeToConfirm), " to confirm"), typed));
  }
  const want = o.typeToConfirm;
  const form = await open({ ...o, fields }, (d) => typed ?? (o.danger ? d.querySelector<HTMLElement>(".act-cancel") : d.querySelector<HTMLElement>(".act-ok")),
    (ok) => {
      if (!typed) return;
      const t = typed;
      const sync = () => { ok.disabled = t.value !== want; };
      t.addEventListener("input", sync);
      sync();
    });
  return form !== null && (typed === null || typed.value === want);
}

export interface NumberOptions {
  title: string;
  body: (Node | string)[];
  label: string;
  value: number;
  min: number;
  max: number;
  okLabel: string;
}

// askNumber asks for a whole number between min and max; null when
// cancelled.
export async function askNumber(o: NumberOptions): Promise<number | null> {
  const input = el("input", {
    id: "act-number", type: "number", inputmode: "numeric", required: "",
    min: String(o.min), max: String(o.max), step: "1", value: String(o.value),
  });
  const field = el("p", { class: "act-field" }, el("label", { for: "act-number" }, o.label), input);
  const form = await open({ title: o.title, body: o.body, okLabel: o.okLabel, fields: [field] }, () => {
    input.select();
    return input;
  });
  if (!form) return null;
  const n = Number(input.value);
  return Number.isInteger(n) && n >= o.min && n <= o.max ? n : null;
}
