// The Kubernetes channel protocol over WebSocket (v5.channel.k8s.io and
// v4.channel.k8s.io), as kube-apiserver speaks it for pods/exec and
// pods/attach: every binary message starts with a byte naming its stream.
//
//   0 stdin   1 stdout   2 stderr
//   3 error: the session's outcome, a metav1.Status as JSON (v4 and v5);
//     a non-zero exit is reason NonZeroExitCode with a cause ExitCode
//   4 resize: {"Width": cols, "Height": rows}
//   255 close (v5 only): [255, stream] closes one stream (stdin's EOF)

export const PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

export const STDIN = 0;
export const STDOUT = 1;
export const STDERR = 2;
export const ERROR = 3;
export const RESIZE = 4;
export const CLOSE = 255;

const utf8 = new TextEncoder();

// frame is one message to send: the stream byte, then data.
export function frame(stream: number, data: Uint8Array | string): Uint8Array {
  const body = typeof data === "string" ? utf8.encode(data) : data;
  const out = new Uint8Array(body.length + 1);
  out[0] = stream;
  out.set(body, 1);
  return out;
}

// resizeFrame tells the process its terminal's size.
export function resizeFrame(cols: number, rows: number): Uint8Array {
  return frame(RESIZE, JSON.stringify({ Width: cols, Height: rows }));
}

// closeFrame ends stdin (v5): the process reads EOF.
export function closeFrame(stream: number): Uint8Array {
  return new Uint8Array([CLOSE, stream]);
}

// Outcome is what the error stream said.
export type Outcome =
  | { kind: "exit"; code: number } // the process exited (0: Success)
  | { kind: "failure"; message: string; reason: string }; // the session failed (not started, …)

// parseStatus reads the error stream's message (v4+: a metav1.Status).
// An older server's plain text is a failure with that text.
export function parseStatus(text: string): Outcome {
  let st: { status?: string; message?: string; reason?: string; details?: { causes?: { reason?: string; message?: string }[] } };
  try {
    st = JSON.parse(text);
  } catch {
    return { kind: "failure", message: text.trim(), reason: "" };
  }
  if (st.status === "Success") return { kind: "exit", code: 0 };
  const cause = st.details?.causes?.find((c) => c.reason === "ExitCode");
  if (st.reason === "NonZeroExitCode" && cause?.message && /^[0-9]+$/.test(cause.message)) {
    return { kind: "exit", code: Number(cause.message) };
  }
  return { kind: "failure", message: st.message ?? text.trim(), reason: st.reason ?? "" };
}

// notFound reports whether a failure says the command's executable does
// not exist in the container (runtimes word it differently; a shell that
// could not run it exits 126 or 127 with "not found" in its message).
export function notFound(o: Outcome): boolean {
  if (o.kind !== "failure") return false;
  return /executable file not found|no such file or directory|not found in \$PATH|: not found/i.test(o.message);
}

// CONTROL matches what pasted text may not carry to a terminal: C0
// controls but tab, LF and CR (ESC among them: it would let the text end
// bracketed paste, ESC [ 2 0 1 ~, and run the rest as typed), DEL, and the
// C1 controls (U+0080–U+009F; U+009B is a one-character CSI).
const CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]/g;

// sanitizePaste is pasted text as it may reach the terminal.
export function sanitizePaste(text: string): string {
  return text.replace(CONTROL, "");
}
