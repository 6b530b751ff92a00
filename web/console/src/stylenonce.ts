// xterm.js and the console's Content-Security-Policy.
//
// The console's CSP allows style sheets from the stub ('self') and, for
// style elements, the page's own nonce: a fresh random value in each
// response's CSP header (style-src 'self' 'nonce-…') and in the page
// (<meta name="keyhole-style-nonce">), made by the stub (web/console.go).
// xterm.js 6 (DOM renderer) creates three <style> elements at run time,
// with no option to give them a nonce, and colors 24-bit cells with
// setAttribute("style", …). While a terminal is open:
//
//   - document.createElement("style") returns an element carrying the
//     nonce, so xterm's style elements apply (and no other inline style
//     does: markup injected into the page has no nonce, and cannot read
//     it, as no injected script runs under script-src 'self');
//   - setAttribute("style", v) on a <span> sets v through the CSSOM
//     (element.style.cssText), which CSP leaves to scripts: scripts of
//     the page may always style elements that way, so this grants them
//     nothing; an injected style= attribute in markup is still refused.
//
// script-src is untouched: no inline script, no eval.

let installed = 0;
let restore: (() => void) | null = null;

// styleNonce is the page's style nonce ("" if the page has none).
export function styleNonce(): string {
  return document.querySelector<HTMLMetaElement>('meta[name="keyhole-style-nonce"]')?.content ?? "";
}

// allowTerminalStyles installs the two shims; the returned function
// removes them (once every terminal that installed them is gone).
export function allowTerminalStyles(): () => void {
  if (installed++ === 0) {
    const nonce = styleNonce();
    const create = Document.prototype.createElement;
    const set = Element.prototype.setAttribute;
    Object.defineProperty(document, "createElement", {
      configurable: true,
      writable: true,
      value: function createElement(this: Document, tag: string, options?: ElementCreationOptions): HTMLElement {
        const e = create.call(this, tag, options);
        if (e instanceof HTMLStyleElement && nonce) e.nonce = nonce;
        return e;
      },
    });
    Element.prototype.setAttribute = function setAttribute(this: Element, name: string, value: string): void {
      if (this instanceof HTMLSpanElement && name.toLowerCase() === "style") {
        this.style.cssText = String(value);
        return;
      }
      set.call(this, name, value);
    };
    restore = () => {
      delete (document as unknown as Record<string, unknown>).createElement;
      Element.prototype.setAttribute = set;
    };
  }
  let done = false;
  return () => {
    if (done) return;
    done = true;
    if (--installed === 0) {
      restore?.();
      restore = null;
    }
  };
}
