// The entry of dist/xterm.js: xterm.js and its fit addon, loaded by the
// terminal view (terminal.ts) only when a terminal opens, so that the
// console's own bundle stays small. It hands the two classes to the
// console through one global; they hold nothing of any session.
//
// Not loaded: the clipboard addon (output could then write the user's
// clipboard, OSC 52) and every other addon.

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";

(window as unknown as { KeyholeXterm: unknown }).KeyholeXterm = { Terminal, FitAddon };
