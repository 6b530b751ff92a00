// Acting on objects where RBAC allows (actions.ts: scale, restart,
// delete; edit.ts: edit YAML), and a minimal object page for them when no
// other module provides one (actobject.ts).
import "./actions";
import "./edit";
import "./actobject";
