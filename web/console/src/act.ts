// Acting on objects where RBAC allows (actions.ts: scale, restart,
// delete; edit.ts: edit YAML); the object page (browse/objectview.ts)
// renders the actions and the edit tab.
import "./actions";
import "./edit";
